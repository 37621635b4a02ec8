# Dovecot Sieve: wake Delta Chat on the recipient's devices once a message is delivered, as
# chatmail relays do, for Dovecot 2.3 and 2.4 alike. It runs before the user's own script and
# before the message is stored: deltapush-mda --hold only decides and holds the wakeup, and
# deltapush.lua's commit hook lets it go once the message is in the mailbox.
#
# Where it goes: /etc/dovecot/sieve/deltapush.sieve, named in
#   conf.d/90-deltapush.conf. Compile it after every change, and again after an upgrade from
#   Dovecot 2.3 to 2.4 (Dovecot cannot write the compiled copy itself, and would log an error
#   for every delivery):
#     sievec /etc/dovecot/sieve/deltapush.sieve
# What to change: nothing. The token comes from the phone, through IMAP; no file per user.
#
# Delta Chat keeps its device token, encrypted for the notification relay, in the private
# metadata /private/devicetoken of INBOX; it stores it there on every login when the server
# shows the sign of push (XDELTAPUSH, or the server metadata deltapush.lua sets). A user
# without one costs one lookup and no program.

require ["mboxmetadata", "variables", "relational", "comparator-i;ascii-numeric",
         "vnd.dovecot.execute"];

if metadata :matches "INBOX" "/private/devicetoken" "?*" {
  set "token" "${0}";
  # Dovecot refuses a program argument longer than 1024 bytes, and that failure, test or not,
  # ends this script: the mail is kept but the user's own script is skipped, and the log shows
  # the start of the token (in 2.3 and 2.4 alike). Today's tokens are 908-924 characters.
  set :length "length" "${token}";
  if string :value "le" :comparator "i;ascii-numeric" "${length}" "1024" {
    # As a test, so that a program that fails, hangs or is missing never stops the user's
    # own script; its error lines go to Dovecot's log.
    #  --remember   the metadata holds only the last device to log in: every token ever
    #               given is remembered (90 days) and all of them are woken
    #  --hold       decide now (automatic mail, and any rule you add here, such as
    #               --only-chat), post once the message is stored; it returns in a few ms
    #               and never waits for the relay
    #  --           the token is never taken for an option
    if not execute :pipe "deltapush-mda" ["--url", "https://notifications.delta.chat/notify",
                                          "--remember", "--hold", "--", "${token}"] {
    }
  }
}
