//! qmail's control files, smtproutes, tcpto and qmail-remote's report records.
#![forbid(unsafe_code)]
