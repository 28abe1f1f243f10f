//! Sans-IO SMTP pieces: line and reply readers, the STARTTLS proxy state machine, the delivery dialogue.
#![forbid(unsafe_code)]
