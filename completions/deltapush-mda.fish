complete -c deltapush-mda -l token-file -d 'Read tokens from this file, one per line; blank lines and # comments are ignored' -r -F
complete -c deltapush-mda -l url -d 'Notification relay; plain http:// only to a loopback host' -r -f
complete -c deltapush-mda -l interval -d 'Post each token at most once per this interval, e.g. 10s or "1m 30s"; 0 turns the limit off' -r -f
complete -c deltapush-mda -l timeout -d 'Network budget for the whole run: all tokens and all retries' -r -f
complete -c deltapush-mda -l cache-dir -d 'Where the per-token state lives [default: $XDG_CACHE_HOME/deltapush-mda or ~/.cache/deltapush-mda]' -r -f -a "(__fish_complete_directories)"
complete -c deltapush-mda -l skip-from -d 'Skip mail from this address (your own, so mail from your other devices stays quiet); repeatable or comma-separated' -r -f
complete -c deltapush-mda -l max-age -d 'Skip mail whose Date is older than this, e.g. 1h; a missing or bad Date counts as new. Delta Chat shifts Date by a few minutes, so keep this above 10m' -r -f
complete -c deltapush-mda -l watch -d 'Keep watching this IMAP mailbox and wake the tokens for every new message in it: imaps://USER@HOST[:PORT][/MAILBOX] (TLS, port 993) or imap://… (STARTTLS, port 143). MAILBOX is INBOX unless given; %40 in USER stands for @. Reads no standard input' -r -f
complete -c deltapush-mda -l password-file -d 'With --watch or --setup: the IMAP password is the first line of this file (only its owner may read it)' -r -F
complete -c deltapush-mda -l password-command -d 'With --watch or --setup: run this shell command at every login; the first line of its output is the password, or the OAuth 2 access token with --auth xoauth2' -r -f -a "(__fish_complete_command)"
complete -c deltapush-mda -l auth -d 'With --watch or --setup: how to log in' -r -f -a "password\t'IMAP LOGIN with the user and password'
xoauth2\t'SASL XOAUTH2 with an OAuth 2 access token (Gmail, Outlook), from --password-command'"
complete -c deltapush-mda -l setup -d 'Set up a watcher of the account NAME from Delta Chat\'s log (pasted on standard input, or --log): asks only what the log lacks, checks the login, writes the files of deltapush-watch@NAME, then enables and starts that systemd user unit. Run it again to add a phone\'s token or change a setting. With --watch, that mailbox instead of the log\'s servers' -r -f
complete -c deltapush-mda -l log -d 'With --setup: read the log from this file (saved from View Log) instead of standard input; repeatable, one log per phone' -r -F
complete -c deltapush-mda -l address -d 'With --setup: your address, where the log hides it (***@example.org)' -r -f
complete -c deltapush-mda -l trust-server -d 'With --setup: send the password to this IMAP server of the log although it is not in your address\'s domain (asked on a terminal); repeatable or comma-separated' -r -f -a "(__fish_print_hostnames)"
complete -c deltapush-mda -l remember -d 'Remember every token given, and notify all remembered tokens of this cache dir each time; a token is forgotten after 90 days without being given, or once the relay says it is gone'
complete -c deltapush-mda -l dry-run -d 'Decide and report what would be done, one line per token; send nothing, write nothing'
complete -c deltapush-mda -l tempfail -d 'Exit 75 (EX_TEMPFAIL) when a token could not be notified, so the caller retries the mail'
complete -c deltapush-mda -l only-chat -d 'Notify only for Delta Chat messages (those with a Chat-Version header)'
complete -c deltapush-mda -l check -d 'Send nothing; check the tokens, the cache dir and the way to the relay (and with --watch the login and the mailbox), one line each, and exit 0 only if all is well'
complete -c deltapush-mda -s v -l verbose -d 'Print one line per decision on standard error'
complete -c deltapush-mda -s q -l quiet -d 'Print nothing, not even errors: the exit status says it all'
complete -c deltapush-mda -l hold -d 'For Dovecot\'s Sieve, which runs before the message is stored: decide, and hold the wakeup until Dovecot\'s commit hook (deltapush.lua) says the message is stored'
complete -c deltapush-mda -s h -l help -d 'Print help (see more with \'--help\')'
complete -c deltapush-mda -s V -l version -d 'Print version'
