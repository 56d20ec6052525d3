//! How a container's notified calls end when no daemon decides them: the
//! answers the keeper gives once no daemon came back in time, and the
//! answer to a call a dead daemon had received but not answered.
//!
//! Continuing is the container's normal path, and safe wherever every host
//! socket the container holds is pinned to an outward interface. A container
//! with host listeners (published ports) holds sockets that are not: there a
//! `connect` or `shutdown` run unchecked could turn a listener into a socket
//! that reaches host loopback, so those calls fail as they did before the
//! keeper existed (ENOSYS), and the calls that cannot hurt continue.

/// The answer to one call nobody could decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The kernel runs the call unchanged.
    Continue,
    /// The call fails with this errno.
    Fail(i32),
}

/// A container's answers by syscall number; anything not listed continues.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fallback {
    /// `(syscall number, errno)` of the calls that must not continue.
    fail: Vec<(i32, i32)>,
}

impl Fallback {
    /// Every call continues.
    pub fn continue_all() -> Self {
        Self::default()
    }

    /// The calls in `fail` end with their errno; a call of unknown number
    /// fails with the first of them (it may be one).
    pub fn failing(fail: Vec<(i32, i32)>) -> Self {
        Self { fail }
    }

    /// The rules as pairs, for the wire.
    pub fn rules(&self) -> &[(i32, i32)] {
        &self.fail
    }

    /// The answer to a call of syscall `nr`.
    pub fn answer(&self, nr: i32) -> Answer {
        match self.fail.iter().find(|(n, _)| *n == nr) {
            Some(&(_, errno)) => Answer::Fail(errno),
            None => Answer::Continue,
        }
    }

    /// The answer to a call whose number nobody knows any more (received
    /// by a daemon that died before answering): it may be any of the
    /// listed ones, so it fails as the first does, if any is listed.
    pub fn answer_unknown(&self) -> Answer {
        self.fail
            .first()
            .map_or(Answer::Continue, |&(_, errno)| Answer::Fail(errno))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_calls_fail_and_the_rest_continue() {
        let open = Fallback::continue_all();
        assert_eq!(open.answer(42), Answer::Continue);
        assert_eq!(open.answer_unknown(), Answer::Continue);
        let strict = Fallback::failing(vec![(42, libc::ENOSYS), (48, libc::ENOSYS)]);
        assert_eq!(strict.answer(42), Answer::Fail(libc::ENOSYS));
        assert_eq!(strict.answer(48), Answer::Fail(libc::ENOSYS));
        assert_eq!(strict.answer(49), Answer::Continue);
        assert_eq!(strict.answer_unknown(), Answer::Fail(libc::ENOSYS));
        assert_eq!(Fallback::failing(Vec::new()), open);
    }
}
