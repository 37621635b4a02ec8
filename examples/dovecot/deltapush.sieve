# Dovecot Sieve: wake Delta Chat on the recipient's devices the moment a message is delivered,
# as chatmail relays do, before the user's own Sieve script runs.
#
# Where it goes: /etc/dovecot/sieve/deltapush.sieve, named by sieve_before in
#   conf.d/90-deltapush.conf. Compile it after every change (Dovecot cannot write the compiled
#   copy itself, and would log an error for every delivery):
#     sievec /etc/dovecot/sieve/deltapush.sieve
# What to change: nothing. The token comes from the phone, through IMAP; no file per user.
#
# Delta Chat keeps its device token, encrypted for the notification relay, in the private
# metadata /private/devicetoken of INBOX; it stores it there on every login when the server
# announces XDELTAPUSH. A user without one costs one lookup and no program.

require ["mboxmetadata", "variables", "relational", "comparator-i;ascii-numeric",
         "vnd.dovecot.execute"];

if metadata :matches "INBOX" "/private/devicetoken" "?*" {
  set "token" "${0}";
  # Dovecot refuses a program argument longer than 1024 bytes, and that failure, test or not,
  # ends this script: the mail is kept but the user's own script is skipped, and the log shows
  # the start of the token. Today's tokens are 908-920 characters of ASCII.
  set :length "length" "${token}";
  if string :value "le" :comparator "i;ascii-numeric" "${length}" "1024" {
    # As a test, so that a program that fails, hangs or is missing never stops the user's
    # own script; its error lines go to Dovecot's log.
    #  --remember   the metadata holds only the last device to log in: every token ever
    #               given is remembered (90 days) and all of them are woken
    #  --timeout 5s Dovecot answers the mail server only when the program has ended, and
    #               kills it after sieve_execute_exec_timeout (10 s)
    #  --           the token is never taken for an option
    if not execute :pipe "deltapush-mda" ["--url", "https://notifications.delta.chat/notify",
                                          "--remember", "--timeout", "5s", "--", "${token}"] {
    }
  }
}
