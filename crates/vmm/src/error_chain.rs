//! One line for an error and its causes, as users see errors.

use std::error::Error;

/// The messages of `error` and of each error in its [`source`](Error::source)
/// chain, joined with `": "`. A cause whose message the previous message
/// already ends with (an error that prints its source as well as returning
/// it) is not repeated.
///
/// # Example
///
/// ```
/// use std::io;
///
/// let error = ember_vmm::Error::Open {
///     what: "kernel",
///     path: "/vm/vmlinux".into(),
///     source: io::Error::from(io::ErrorKind::NotFound),
/// };
/// assert_eq!(error.to_string(), "cannot open kernel /vm/vmlinux");
/// assert_eq!(
///     ember_vmm::error_chain(&error),
///     "cannot open kernel /vm/vmlinux: entity not found"
/// );
/// ```
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut previous = line.clone();
    let mut cause = error.source();
    while let Some(current) = cause {
        let message = current.to_string();
        if !previous.ends_with(&message) {
            line.push_str(": ");
            line.push_str(&message);
        }
        previous = message;
        cause = current.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;

    /// An error with a message and an optional cause.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1
                .as_deref()
                .map(|cause| cause as &(dyn Error + 'static))
        }
    }

    fn layers(messages: &[&'static str]) -> Layer {
        let mut chain = None;
        for message in messages.iter().rev() {
            chain = Some(Layer(message, chain.map(Box::new)));
        }
        chain.unwrap()
    }

    #[test]
    fn joins_every_cause() {
        let error = layers(&["drive `root`", "cannot open disk.img", "No such file"]);
        assert_eq!(
            error_chain(&error),
            "drive `root`: cannot open disk.img: No such file"
        );
    }

    #[test]
    fn skips_a_cause_its_parent_already_printed() {
        let error = layers(&["boot: cannot map: EINVAL", "cannot map: EINVAL", "EINVAL"]);
        assert_eq!(error_chain(&error), "boot: cannot map: EINVAL");
    }

    #[test]
    fn an_error_without_causes_is_its_message() {
        assert_eq!(error_chain(&layers(&["stopped"])), "stopped");
    }
}
