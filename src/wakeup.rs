//! One token's wakeup, whoever sends it (a run, or the deferred sender): whether it may go
//! now, and what the relay's answer means for the token's state.

use std::time::{Duration, SystemTime};

use crate::cache::{MAX_PAUSE, State};
use crate::relay::Answer;
use crate::token::Token;

/// What to do about one token now.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Post,
    /// The interval (or a pause the relay asked for) ends then.
    Wait(SystemTime),
    /// The relay answered 410 then.
    Gone(SystemTime),
}

pub fn decide(state: &State, now: SystemTime, interval: Duration) -> Decision {
    if let Some(since) = state.gone_since(now) {
        return Decision::Gone(since);
    }
    match state.next_post(now, interval) {
        Some(until) => Decision::Wait(until),
        None => Decision::Post,
    }
}

/// What a POST's answer means for the token's state. Returns the line to report, if any.
pub fn apply(state: &mut State, answer: &Answer, token: &Token, now: SystemTime) -> Option<String> {
    match answer {
        Answer::Delivered(_) => {
            state.notified = Some(now);
            state.pending = None;
            state.paused = None;
            None
        }
        Answer::Gone => {
            state.gone = Some(now);
            state.pending = None;
            state.forget();
            Some(gone_line(token, now))
        }
        Answer::Pause(wait) => {
            state.paused = Some(now + (*wait).min(MAX_PAUSE));
            None
        }
        Answer::Refused(_) => Some(format!("token {token}: {}", answer.why_not()?)),
        Answer::Unavailable(detail) => Some(format!(
            "token {token}: not notified: {detail}; the next message will try again"
        )),
    }
}

pub fn gone_line(token: &Token, since: SystemTime) -> String {
    format!(
        "token {token}: gone since {} (the relay answered 410); copy the current token from \
         Delta Chat: Settings → Advanced → View Log",
        humantime::format_rfc3339_seconds(since)
    )
}

pub fn deferred_failure_line(token: &Token, at: SystemTime, why: &str) -> String {
    format!(
        "token {token}: the deferred wakeup of {} was not sent: {why}",
        humantime::format_rfc3339_seconds(at)
    )
}

/// Whole seconds, rounded up: "deferred by 0 s" would read as a bug.
pub fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let s = Duration::from_secs;
        let i = s(10);
        assert_eq!(decide(&State::default(), now, i), Decision::Post);
        let recent = State {
            notified: Some(now - s(3)),
            ..State::default()
        };
        assert_eq!(decide(&recent, now, i), Decision::Wait(now + s(7)));
        assert_eq!(decide(&recent, now, Duration::ZERO), Decision::Post);
        let gone = State {
            gone: Some(now - s(60)),
            ..recent.clone()
        };
        assert_eq!(decide(&gone, now, i), Decision::Gone(now - s(60)));
    }

    #[test]
    fn answers_change_the_state() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let t = Token::parse("fcm-x:SECRET").unwrap();
        let mut st = State {
            pending: Some(now),
            token: Some("fcm-x:SECRET".into()),
            seen: Some(now),
            ..State::default()
        };
        assert_eq!(apply(&mut st, &Answer::Delivered(200), &t, now), None);
        assert_eq!((st.notified, st.pending), (Some(now), None));

        let line = apply(&mut st, &Answer::Pause(Duration::from_secs(7200)), &t, now);
        assert_eq!((line, st.paused), (None, Some(now + MAX_PAUSE)));

        let line = apply(&mut st, &Answer::Gone, &t, now).unwrap();
        assert_eq!((st.gone, st.token.as_deref()), (Some(now), None));
        assert!(
            line.starts_with(&format!("token {t}: gone since ")),
            "{line}"
        );
        assert!(!line.contains("SECRET"));

        let line = apply(&mut st, &Answer::Unavailable("x".into()), &t, now).unwrap();
        assert_eq!(
            line,
            format!("token {t}: not notified: x; the next message will try again")
        );
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(secs(Duration::from_millis(1)), 1);
        assert_eq!(secs(Duration::from_secs(7)), 7);
        assert_eq!(secs(Duration::ZERO), 0);
    }
}
