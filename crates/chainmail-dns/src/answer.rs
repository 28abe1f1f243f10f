//! What one hickory result means for us: records, NODATA, NXDOMAIN, a CNAME
//! the server left for us to follow, or a temporary failure (and whether
//! asking again right away makes sense).
//!
//! hickory reports the cases in two places (see `DnsError::from_response`
//! in hickory-net):
//!
//! * a response without any answer record and with rcode NOERROR or
//!   NXDOMAIN comes back as `Err(NetError::Dns(DnsError::NoRecordsFound))`
//!   with `response_code` NoError (NODATA) or NXDomain;
//! * SERVFAIL, REFUSED, FORMERR, NOTIMP… come back as
//!   `Err(NetError::Dns(DnsError::ResponseCode(code)))`;
//! * a response with answer records is `Ok`, whatever its rcode: NXDOMAIN
//!   with a CNAME in the answer (the alias exists, its target does not)
//!   arrives as `Ok` with rcode NXDomain, and so does an rcode hickory does
//!   not know (`Unknown`);
//! * transport failures are the other `NetError`s (`Timeout`, `Io`,
//!   `NoConnections`, `Truncated` if TCP was truncated too, `Proto` for a
//!   malformed answer…).

use hickory_resolver::net::{DnsError as HDnsError, NetError, NoRecords};
use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use crate::plan::Outcome;

/// The meaning of one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The outcome of the query:
    /// * `Found`: the records of the type asked for, owned by the name or
    ///   by the end of its CNAME chain, in answer order;
    /// * `NoData`, `NxDomain`: for the name, or the end of its chain;
    /// * `Temporary`: an error code from the server (SERVFAIL, REFUSED…):
    ///   asking again at once would not help.
    Final(Outcome<RData>),
    /// The answer stops at a CNAME whose target the server did not look up
    /// (an authoritative server answering for a target outside its zones):
    /// ask again for the target.
    Chase(Name),
    /// No usable answer because of the transport (timeout, network error,
    /// malformed or mismatched answer): worth sending the query again.
    Retry(String),
}

fn temporary(detail: impl Into<String>) -> Answer {
    Answer::Final(Outcome::Temporary(detail.into()))
}

/// Interprets a response to `qtype` `qname`.
pub(crate) fn from_message(qname: &Name, qtype: RecordType, msg: &Message) -> Answer {
    let rcode = msg.metadata.response_code;
    if !matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
        return temporary(rcode_detail(rcode));
    }
    if msg.metadata.truncation {
        // hickory retries a truncated UDP answer over TCP; a truncated
        // answer here means TCP was not available.
        return Answer::Retry("truncated answer".to_owned());
    }
    // Follow the CNAME chain inside the answer section from qname.
    let mut current = qname.clone();
    let mut hops = 0;
    loop {
        let records: Vec<RData> = msg
            .answers
            .iter()
            .filter(|r| r.record_type() == qtype && r.name == current)
            .map(|r| r.data.clone())
            .collect();
        if !records.is_empty() {
            return Answer::Final(Outcome::Found(records));
        }
        let next = msg.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.name == current => Some(target.0.clone()),
            _ => None,
        });
        match next {
            Some(target) => {
                hops += 1;
                if hops > msg.answers.len() {
                    return temporary("CNAME loop");
                }
                current = target;
            }
            None => break,
        }
    }
    if rcode == ResponseCode::NXDomain {
        return Answer::Final(Outcome::NxDomain);
    }
    if current == *qname {
        // Answer records, none of them for us (or a CNAME for another
        // name): nothing here.
        return Answer::Final(Outcome::NoData);
    }
    // The chain ends at a name without records of the type. A recursive
    // server (RA) has looked the target up, and an SOA in the authority
    // section is the negative answer for it: NODATA. Otherwise the server
    // stopped at the CNAME: one more round for the target.
    let has_soa = msg.authorities.iter().any(|r| r.record_type() == RecordType::SOA);
    if msg.metadata.recursion_available || has_soa { Answer::Final(Outcome::NoData) } else { Answer::Chase(current) }
}

/// Interprets a hickory error.
pub(crate) fn from_error(err: &NetError) -> Answer {
    match err {
        NetError::Dns(HDnsError::NoRecordsFound(NoRecords { response_code, soa, ns, .. })) => match *response_code {
            ResponseCode::NXDomain => Answer::Final(Outcome::NxDomain),
            // An empty NOERROR answer that only names other servers is a
            // referral: the server is not recursive, not a NODATA.
            ResponseCode::NoError if soa.is_none() && ns.is_some() => {
                temporary("referral from a server that does not recurse")
            }
            ResponseCode::NoError => Answer::Final(Outcome::NoData),
            code => temporary(rcode_detail(code)),
        },
        NetError::Dns(HDnsError::ResponseCode(code)) => temporary(rcode_detail(*code)),
        NetError::Timeout => Answer::Retry("timed out".to_owned()),
        NetError::Io(_) | NetError::NoConnections | NetError::Busy | NetError::Truncated => {
            Answer::Retry(err.to_string())
        }
        // A mismatched or malformed answer may be a spoofing attempt or a
        // broken middlebox; a new query gets a new id and port.
        NetError::QueryCaseMismatch | NetError::Proto(_) | NetError::ForeignClassRecord { .. } => {
            Answer::Retry(err.to_string())
        }
        _ => temporary(err.to_string()),
    }
}

/// A result as a whole.
pub(crate) fn interpret<M: std::ops::Deref<Target = Message>>(
    qname: &Name,
    qtype: RecordType,
    result: &Result<M, NetError>,
) -> Answer {
    match result {
        Ok(msg) => from_message(qname, qtype, msg),
        Err(e) => from_error(e),
    }
}

fn rcode_detail(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".to_owned(),
        ResponseCode::Refused => "REFUSED".to_owned(),
        ResponseCode::FormErr => "FORMERR".to_owned(),
        ResponseCode::NotImp => "NOTIMP".to_owned(),
        other => format!("response code {}", u16::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    use hickory_resolver::proto::op::{MessageType, OpCode, Query};
    use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, MX, SOA};
    use hickory_resolver::proto::rr::{Record, RecordType};

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("test name")
    }
    fn rec(owner: &str, data: RData) -> Record {
        Record::from_rdata(name(owner), 300, data)
    }
    fn a(s: &str) -> RData {
        RData::A(A(s.parse::<Ipv4Addr>().expect("v4")))
    }
    fn aaaa(s: &str) -> RData {
        RData::AAAA(AAAA(s.parse::<Ipv6Addr>().expect("v6")))
    }
    fn cname(s: &str) -> RData {
        RData::CNAME(CNAME(name(s)))
    }
    fn mx(pref: u16, s: &str) -> RData {
        RData::MX(MX::new(pref, name(s)))
    }
    fn soa(zone: &str) -> Record {
        rec(zone, RData::SOA(SOA::new(name("ns.test."), name("h.test."), 1, 3600, 600, 86400, 300)))
    }
    struct Msg {
        rcode: ResponseCode,
        ra: bool,
        tc: bool,
        answers: Vec<Record>,
        authorities: Vec<Record>,
    }
    impl Msg {
        fn new(answers: Vec<Record>) -> Self {
            Self { rcode: ResponseCode::NoError, ra: true, tc: false, answers, authorities: vec![] }
        }
        fn build(self, q: &str, qtype: RecordType) -> Message {
            let mut m = Message::new(7, MessageType::Response, OpCode::Query);
            m.metadata.response_code = self.rcode;
            m.metadata.recursion_available = self.ra;
            m.metadata.truncation = self.tc;
            m.add_query(Query::query(name(q), qtype));
            m.add_answers(self.answers);
            m.add_authorities(self.authorities);
            m
        }
    }
    fn run(q: &str, qtype: RecordType, m: Msg) -> Answer {
        from_message(&name(q), qtype, &m.build(q, qtype))
    }

    fn found(v: Vec<RData>) -> Answer {
        Answer::Final(Outcome::Found(v))
    }
    const NODATA: Answer = Answer::Final(Outcome::NoData);
    const NXDOMAIN: Answer = Answer::Final(Outcome::NxDomain);
    fn temp(s: &str) -> Answer {
        Answer::Final(Outcome::Temporary(s.to_owned()))
    }
    fn is_final_temporary(a: &Answer) -> bool {
        matches!(a, Answer::Final(Outcome::Temporary(_)))
    }

    #[test]
    fn records_in_answer_order() {
        let m = Msg::new(vec![rec("h.test.", a("192.0.2.2")), rec("h.test.", a("192.0.2.1"))]);
        assert_eq!(run("h.test.", RecordType::A, m), found(vec![a("192.0.2.2"), a("192.0.2.1")]));
        // Case does not matter; other types and other owners are ignored.
        let m = Msg::new(vec![
            rec("H.TEST.", mx(10, "mx.test.")),
            rec("h.test.", aaaa("2001:db8::1")),
            rec("other.test.", mx(5, "evil.test.")),
        ]);
        assert_eq!(run("h.test.", RecordType::MX, m), found(vec![mx(10, "mx.test.")]));
    }

    #[test]
    fn cname_chains() {
        // Resolved by the server: no extra round.
        let m = Msg::new(vec![
            rec("h.test.", cname("c1.test.")),
            rec("c1.test.", cname("c2.test.")),
            rec("c2.test.", mx(10, "mx.test.")),
        ]);
        assert_eq!(run("h.test.", RecordType::MX, m), found(vec![mx(10, "mx.test.")]));
        // Chain order in the section does not matter.
        let m = Msg::new(vec![rec("c1.test.", a("192.0.2.1")), rec("h.test.", cname("c1.test."))]);
        assert_eq!(run("h.test.", RecordType::A, m), found(vec![a("192.0.2.1")]));
        // Chain to a name without MX, from a recursive server: NODATA.
        let m = Msg::new(vec![rec("h.test.", cname("c1.test."))]);
        assert_eq!(run("h.test.", RecordType::MX, m), NODATA);
        // Same from a non-recursive server with the target's SOA: NODATA.
        let m = Msg { ra: false, authorities: vec![soa("test.")], ..Msg::new(vec![rec("h.test.", cname("c1.test."))]) };
        assert_eq!(run("h.test.", RecordType::MX, m), NODATA);
        // A non-recursive server that stopped at the CNAME: chase.
        let m = Msg { ra: false, ..Msg::new(vec![rec("h.test.", cname("c1.other."))]) };
        assert_eq!(run("h.test.", RecordType::MX, m), Answer::Chase(name("c1.other.")));
        // CNAME to a name that does not exist.
        let m = Msg { rcode: ResponseCode::NXDomain, ..Msg::new(vec![rec("h.test.", cname("gone.test."))]) };
        assert_eq!(run("h.test.", RecordType::A, m), NXDOMAIN);
        // A loop.
        let m = Msg { ra: false, ..Msg::new(vec![rec("a.test.", cname("b.test.")), rec("b.test.", cname("a.test."))]) };
        assert_eq!(run("a.test.", RecordType::A, m), temp("CNAME loop"));
        // Answers for someone else only.
        let m = Msg::new(vec![rec("x.test.", a("192.0.2.1"))]);
        assert_eq!(run("h.test.", RecordType::A, m), NODATA);
    }

    #[test]
    fn error_codes_in_messages() {
        for (code, want) in [
            (ResponseCode::ServFail, "SERVFAIL"),
            (ResponseCode::Refused, "REFUSED"),
            (ResponseCode::FormErr, "FORMERR"),
            (ResponseCode::Unknown(3841), "response code 3841"),
        ] {
            let m = Msg { rcode: code, ..Msg::new(vec![rec("h.test.", a("192.0.2.1"))]) };
            assert_eq!(run("h.test.", RecordType::A, m), temp(want), "{code:?}");
        }
        let m = Msg { tc: true, ..Msg::new(vec![]) };
        assert!(matches!(run("h.test.", RecordType::A, m), Answer::Retry(_)));
    }

    #[test]
    fn hickory_errors() {
        let q = Query::query(name("h.test."), RecordType::MX);
        let nx = NetError::from(NoRecords::new(q.clone(), ResponseCode::NXDomain));
        assert_eq!(from_error(&nx), NXDOMAIN);
        let nodata = NetError::from(NoRecords::new(q.clone(), ResponseCode::NoError));
        assert_eq!(from_error(&nodata), NODATA);
        let mut referral = NoRecords::new(q.clone(), ResponseCode::NoError);
        referral.ns = Some(Arc::from(vec![]));
        assert!(is_final_temporary(&from_error(&NetError::from(referral))));
        let servfail = NetError::from(HDnsError::ResponseCode(ResponseCode::ServFail));
        assert_eq!(from_error(&servfail), temp("SERVFAIL"));
        let refused = NetError::from(HDnsError::ResponseCode(ResponseCode::Refused));
        assert_eq!(from_error(&refused), temp("REFUSED"));
        assert_eq!(from_error(&NetError::Timeout), Answer::Retry("timed out".into()));
        let io = NetError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(from_error(&io), Answer::Retry(_)));
        assert!(matches!(from_error(&NetError::NoConnections), Answer::Retry(_)));
        assert!(matches!(from_error(&NetError::Truncated), Answer::Retry(_)));
        assert!(matches!(from_error(&NetError::QueryCaseMismatch), Answer::Retry(_)));
        assert!(is_final_temporary(&from_error(&NetError::Message("odd"))));
    }

    /// The whole decision, from what hickory returns for the MX query to
    /// bounce or retry: every way of failing, and which it must be.
    #[test]
    fn mx_classification_end_to_end() {
        use crate::plan::{MxPlan, read_mx};

        #[derive(Debug, PartialEq)]
        enum Verdict {
            Bounce,
            Retry,
            Continue,
        }
        fn verdict(answer: Answer) -> Verdict {
            let outcome = match answer {
                Answer::Final(o) => o,
                Answer::Chase(_) => return Verdict::Continue,
                // The query loop ends a retried failure as Temporary.
                Answer::Retry(d) => Outcome::Temporary(d),
            };
            let outcome = outcome.map(|d| match d {
                RData::MX(mx) => Some((mx.preference, mx.exchange)),
                _ => None,
            });
            match read_mx("h.test", outcome) {
                Ok(MxPlan::Null) => Verdict::Bounce, // DnsError::NullMx
                Ok(_) => Verdict::Continue,
                Err(e) if e.is_permanent() => Verdict::Bounce,
                Err(_) => Verdict::Retry,
            }
        }
        let q = Query::query(name("h.test."), RecordType::MX);
        let msg = |m: Msg| verdict(run("h.test.", RecordType::MX, m));
        let err = |e: NetError| verdict(from_error(&e));

        assert_eq!(msg(Msg::new(vec![rec("h.test.", mx(10, "mx.test."))])), Verdict::Continue);
        assert_eq!(msg(Msg::new(vec![rec("h.test.", mx(0, "."))])), Verdict::Bounce, "null MX");
        assert_eq!(msg(Msg::new(vec![rec("h.test.", a("192.0.2.1"))])), Verdict::Continue, "implicit MX");
        assert_eq!(msg(Msg::new(vec![rec("h.test.", cname("x.test."))])), Verdict::Continue, "CNAME, no MX");
        let nx_cname = Msg { rcode: ResponseCode::NXDomain, ..Msg::new(vec![rec("h.test.", cname("gone.test."))]) };
        assert_eq!(msg(nx_cname), Verdict::Bounce, "CNAME to nowhere");
        for code in [ResponseCode::ServFail, ResponseCode::Refused, ResponseCode::FormErr, ResponseCode::NotImp] {
            assert_eq!(msg(Msg { rcode: code, ..Msg::new(vec![]) }), Verdict::Retry, "{code:?}");
            assert_eq!(err(NetError::from(HDnsError::ResponseCode(code))), Verdict::Retry, "{code:?}");
        }
        let nx = NoRecords::new(q.clone(), ResponseCode::NXDomain);
        assert_eq!(err(NetError::from(nx)), Verdict::Bounce, "NXDOMAIN");
        let nodata = NoRecords::new(q.clone(), ResponseCode::NoError);
        assert_eq!(err(NetError::from(nodata)), Verdict::Continue, "NODATA: implicit MX");
        let sf = NoRecords::new(q.clone(), ResponseCode::ServFail);
        assert_eq!(err(NetError::from(sf)), Verdict::Retry, "NoRecordsFound with SERVFAIL");
        let mut referral = NoRecords::new(q.clone(), ResponseCode::NoError);
        referral.ns = Some(Arc::from(vec![]));
        assert_eq!(err(NetError::from(referral)), Verdict::Retry, "referral");
        assert_eq!(err(NetError::Timeout), Verdict::Retry);
        assert_eq!(err(NetError::from(std::io::Error::other("down"))), Verdict::Retry);
        assert_eq!(err(NetError::NoConnections), Verdict::Retry);
        assert_eq!(err(NetError::Busy), Verdict::Retry);
        assert_eq!(err(NetError::Truncated), Verdict::Retry);
        assert_eq!(err(NetError::QueryCaseMismatch), Verdict::Retry);
        assert_eq!(err(NetError::Msg("anything else".into())), Verdict::Retry);
        assert_eq!(err(NetError::from(HDnsError::DnssecBogus)), Verdict::Retry);
    }
}
