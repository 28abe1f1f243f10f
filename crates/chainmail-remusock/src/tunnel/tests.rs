use super::*;

fn t0() -> Instant {
    Instant::now()
}

/// Moves bytes between two tunnels, `chunk` bytes at a time, until both
/// are quiet; returns the events of each side.
fn pump(a: &mut Tunnel, b: &mut Tunnel, now: Instant, chunk: usize) -> Result<(Vec<Event>, Vec<Event>), TunnelError> {
    loop {
        let ab = a.output().to_vec();
        a.consume_output(ab.len());
        let ba = b.output().to_vec();
        b.consume_output(ba.len());
        if ab.is_empty() && ba.is_empty() {
            return Ok((a.take_events(), b.take_events()));
        }
        for piece in ab.chunks(chunk) {
            b.receive(now, piece)?;
        }
        for piece in ba.chunks(chunk) {
            a.receive(now, piece)?;
        }
    }
}

/// A socket-server listener `a` and a socket-client dialer `b`.
fn pair(a_ext: bool, b_ext: bool, chunk: usize) -> (Tunnel, Tunnel) {
    let now = t0();
    let mut a = Tunnel::new(Role::SocketServer, true, a_ext, now);
    let mut b = Tunnel::new(Role::SocketClient, false, b_ext, now);
    let (ea, eb) = pump(&mut a, &mut b, now, chunk).expect("handshake");
    assert!(ea.is_empty() && eb.is_empty());
    assert!(a.is_established() && b.is_established());
    (a, b)
}

/// Opens a channel from `a` (socket server) to `b` (socket client).
fn open(a: &mut Tunnel, b: &mut Tunnel, chunk: usize) -> (ChannelId, Option<u32>, Option<u32>) {
    let now = t0();
    let id = a.open_local().expect("id");
    let (ea, eb) = pump(a, b, now, chunk).expect("hello");
    assert!(ea.is_empty());
    assert_eq!(eb, vec![Event::Connect(id)]);
    let b_credit = b.local_connected(id).expect("connecting");
    let (ea, eb) = pump(a, b, now, chunk).expect("connect");
    assert!(eb.is_empty());
    let [Event::Start { id: started, credit }] = ea.as_slice() else { panic!("{ea:?}") };
    assert_eq!(*started, id);
    (id, *credit, b_credit)
}

#[test]
fn the_listener_speaks_first_and_the_dialer_answers_with_the_complement() {
    let now = t0();
    let cases = [
        (Role::SocketServer, true, &b"IS!!"[..], &b"IC"[..], &b"IS!!"[..]),
        (Role::SocketClient, true, b"IC!!", b"IS", b"IC!!"),
        (Role::SocketServer, false, b"", b"IC", b"IS!!"),
        (Role::SocketClient, false, b"", b"IS", b"IC!!"),
    ];
    for (role, listener, first, peer, answer) in cases {
        let mut t = Tunnel::new(role, listener, true, now);
        assert_eq!(t.output(), first, "{role:?} {listener}");
        t.consume_output(first.len());
        for chunk in [&peer[..1], &peer[1..]] {
            t.receive(now, chunk).expect("ident");
        }
        assert!(t.is_established());
        assert_eq!(t.output(), if listener { &b""[..] } else { answer }, "{role:?} {listener}");
    }
    // Without extensions, the original's bytes exactly.
    assert_eq!(Tunnel::new(Role::SocketClient, true, false, now).output(), b"IC");
}

#[test]
fn a_bad_ident_ends_the_tunnel() {
    let now = t0();
    for (role, bytes) in [
        (Role::SocketServer, &b"IS"[..]),
        (Role::SocketClient, b"IC"),
        (Role::SocketServer, b"XC"),
        (Role::SocketServer, b"\0\0"),
        (Role::SocketServer, b"GET / HTTP/1.0\r\n"),
    ] {
        let mut t = Tunnel::new(role, false, true, now);
        assert!(matches!(t.receive(now, bytes), Err(TunnelError::BadIdent(..))), "{bytes:?}");
        assert!(t.output().is_empty(), "no IDENT answered to {bytes:?}");
    }
}

#[test]
fn two_new_peers_find_each_other_and_an_original_never_sees_an_extension() {
    for chunk in 1..=64 {
        for (a_ext, b_ext, want) in [
            (true, true, Capability::Capable),
            (true, false, Capability::Original),
            (false, true, Capability::Original),
            (false, false, Capability::Original),
        ] {
            let (mut a, mut b) = pair(a_ext, b_ext, chunk);
            let (id, a_credit, b_credit) = open(&mut a, &mut b, chunk);
            assert_eq!(a.capability(), if b_ext { want } else { Capability::Original });
            assert_eq!(b.capability(), if a_ext { want } else { Capability::Original });
            let windows = want == Capability::Capable;
            assert_eq!(a_credit, windows.then_some(WINDOW));
            assert_eq!(b_credit, windows.then_some(WINDOW));
            // Data both ways.
            assert_eq!(a.local_data(id, b"ping\n"), 5);
            assert_eq!(b.local_data(id, b"pong\n"), 5);
            let now = t0();
            let (ea, eb) = pump(&mut a, &mut b, now, chunk).expect("data");
            assert_eq!(ea, vec![Event::Data(id, b"pong\n".to_vec())]);
            assert_eq!(eb, vec![Event::Data(id, b"ping\n".to_vec())]);
            // EOF: half-close between new peers, BYE otherwise.
            let still_open = a.local_eof(id);
            assert_eq!(still_open, windows);
            let out = a.output().to_vec();
            assert_eq!(out, if windows { b"E\x00\x01".to_vec() } else { b"B\x00\x01".to_vec() });
            let (_, eb) = pump(&mut a, &mut b, now, chunk).expect("eof");
            assert_eq!(eb, vec![if windows { Event::Eof(id) } else { Event::Close(id) }]);
        }
    }
}

#[test]
fn half_close_lets_the_answer_through_then_bye_is_acknowledged() {
    let now = t0();
    let (mut a, mut b) = pair(true, true, 7);
    let (id, ..) = open(&mut a, &mut b, 7);
    a.local_data(id, b"x\n");
    assert!(a.local_eof(id));
    assert_eq!(a.send_allowance(id), 0, "nothing is sent after EOF");
    let (_, eb) = pump(&mut a, &mut b, now, 7).expect("eof");
    assert_eq!(eb, vec![Event::Data(id, b"x\n".to_vec()), Event::Eof(id)]);
    // The service answers, then closes.
    b.local_written(id, 2);
    assert_eq!(b.local_data(id, b"answer\n"), 7);
    assert!(b.local_eof(id));
    let (ea, _) = pump(&mut a, &mut b, now, 7).expect("answer");
    assert_eq!(ea, vec![Event::Data(id, b"answer\n".to_vec()), Event::Eof(id)]);
    // Both close: the BYEs cross, each one acknowledges the other's.
    a.local_closed(id);
    b.local_closed(id);
    let (ea, eb) = pump(&mut a, &mut b, now, 7).expect("bye");
    assert!(ea.is_empty() && eb.is_empty());
    assert_eq!(a.channel_count(), 0);
    assert_eq!(b.channel_count(), 0);
}

#[test]
fn an_id_is_reused_only_after_its_bye_was_acknowledged() {
    let now = t0();
    let (mut a, mut b) = pair(true, true, 64);
    let (id, ..) = open(&mut a, &mut b, 64);
    a.local_closed(id);
    // Before the acknowledgement, the id stays taken.
    let next = a.open_local().expect("id");
    assert_ne!(next, id);
    let (_, eb) = pump(&mut a, &mut b, now, 64).expect("bye");
    assert_eq!(eb, vec![Event::Close(id), Event::Connect(next)]);
    assert_eq!(a.channel_count(), 1);
    // An original peer frees the id at once.
    let (mut a, mut b) = pair(true, false, 64);
    let (id, ..) = open(&mut a, &mut b, 64);
    a.local_closed(id);
    assert_eq!(a.channel_count(), 0);
    let (_, eb) = pump(&mut a, &mut b, now, 64).expect("bye");
    assert_eq!(eb, vec![Event::Close(id)]);
    assert!(a.output().is_empty() && b.output().is_empty(), "an original is sent no acknowledgement");
}

#[test]
fn ids_start_at_one_and_skip_those_in_use_when_they_wrap() {
    let now = t0();
    let (mut a, _) = pair(true, false, 64);
    assert_eq!(a.open_local(), Some(1));
    assert_eq!(a.open_local(), Some(2));
    a.next_id = u16::MAX - 1;
    assert_eq!(a.open_local(), Some(u16::MAX));
    assert_eq!(a.open_local(), Some(3), "0 is skipped, 1 and 2 are in use");
    let mut early = Tunnel::new(Role::SocketServer, false, true, now);
    assert_eq!(early.open_local(), None, "no channel before the IDENT");
}

#[test]
fn credit_windows_stop_one_channel_only() {
    let now = t0();
    let (mut a, mut b) = pair(true, true, 64);
    let (slow, ..) = open(&mut a, &mut b, 64);
    let (fast, ..) = open(&mut a, &mut b, 64);
    let block = vec![1u8; MAX_DATA];
    let mut sent = 0;
    while a.send_allowance(slow) > 0 {
        sent += a.local_data(slow, &block);
    }
    assert_eq!(sent, WINDOW as usize);
    assert_eq!(a.local_data(slow, b"more"), 0);
    assert_eq!(a.local_data(fast, b"still"), 5, "the other channel is not stalled");
    let (_, eb) = pump(&mut a, &mut b, now, 64).expect("data");
    assert_eq!(eb.len(), WINDOW as usize / MAX_DATA + 1);
    // The slow reader takes a batch: credit comes back.
    b.local_written(slow, CREDIT_BATCH as usize);
    let (ea, _) = pump(&mut a, &mut b, now, 64).expect("credit");
    assert_eq!(ea, vec![Event::Credit(slow, CREDIT_BATCH)]);
    assert_eq!(a.send_allowance(slow), MAX_DATA);
    // Small writes cost no credit frame each, until half the window is used.
    b.local_written(fast, 5);
    let (ea, _) = pump(&mut a, &mut b, now, 64).expect("no credit yet");
    assert!(ea.is_empty());
    let mut used = 5;
    while used < WINDOW as usize / 2 {
        assert_eq!(a.local_data(fast, &block[..1000]), 1000);
        used += 1000;
    }
    pump(&mut a, &mut b, now, 64).expect("data");
    b.local_written(fast, 1);
    let (ea, _) = pump(&mut a, &mut b, now, 64).expect("credit");
    assert_eq!(ea, vec![Event::Credit(fast, 6)], "everything written is given back");
    // A sender that used its whole window gets credit for any write.
    let (mut a, mut b) = pair(true, true, 64);
    let (id, ..) = open(&mut a, &mut b, 64);
    while a.send_allowance(id) > 0 {
        a.local_data(id, &block);
    }
    pump(&mut a, &mut b, now, 64).expect("data");
    b.local_written(id, 1);
    let (ea, _) = pump(&mut a, &mut b, now, 64).expect("credit");
    assert_eq!(ea, vec![Event::Credit(id, 1)]);
}

#[test]
fn a_peer_that_overruns_a_window_ends_the_tunnel() {
    let now = t0();
    let (mut a, mut b) = pair(true, true, 64);
    let (id, ..) = open(&mut a, &mut b, 64);
    let mut bytes = Vec::new();
    for _ in 0..WINDOW as usize / MAX_DATA {
        frame::encode_data(&mut bytes, id, &[0u8; MAX_DATA]);
    }
    b.receive(now, &bytes).expect("within the window");
    let mut one_more = Vec::new();
    frame::encode_data(&mut one_more, id, b"x");
    assert_eq!(b.receive(now, &one_more), Err(TunnelError::Window(id)));
    // Credit beyond the window, too.
    let (mut a, mut b) = pair(true, true, 64);
    let (id, ..) = open(&mut a, &mut b, 64);
    let mut credit = Vec::new();
    Frame::Credit(id, 1).encode(&mut credit);
    assert_eq!(a.receive(now, &credit), Err(TunnelError::Window(id)));
}

#[test]
fn frames_from_the_wrong_role_or_for_busy_ids_end_the_tunnel() {
    let now = t0();
    let cases: &[(bool, &[u8], TunnelError)] = &[
        // (to the socket server?, frame, error)
        (true, b"H\x00\x01", TunnelError::WrongRole("HELLO")),
        (false, b"C\x00\x01", TunnelError::WrongRole("CONNECT")),
        (false, b"H\x00\x01H\x00\x01", TunnelError::DuplicateHello(1)),
        (false, b"H\x00\x01D\x00\x01\x00\x01x", TunnelError::DataBeforeConnect(1)),
        (false, b"H\x00\x01Z", TunnelError::Frame(FrameError::UnknownCommand(b'Z'))),
        (false, b"D\x00\x01\x00\x00", TunnelError::Frame(FrameError::BadLength(0))),
        (true, b"D\x00\x01\x40\x01", TunnelError::Frame(FrameError::BadLength(16385))),
        // An extension from a peer that did not probe.
        (true, b"E\x00\x01", TunnelError::Frame(FrameError::UnknownCommand(b'E'))),
    ];
    for (to_server, frames, want) in cases {
        for chunk in 1..=8 {
            let (mut server, mut client) = pair(true, false, 64);
            let t = if *to_server { &mut server } else { &mut client };
            let mut got = Ok(());
            for piece in frames.chunks(chunk) {
                got = t.receive(now, piece);
                if got.is_err() {
                    break;
                }
            }
            assert_eq!(got.as_ref(), Err(want), "{frames:?} chunk {chunk}");
        }
    }
    // A second CONNECT.
    let (mut a, mut b) = pair(true, false, 64);
    let (id, ..) = open(&mut a, &mut b, 64);
    let mut c = Vec::new();
    Frame::Connect(id).encode(&mut c);
    assert_eq!(a.receive(now, &c), Err(TunnelError::DuplicateConnect(id)));
}

#[test]
fn late_frames_for_closed_ids_are_ignored() {
    let now = t0();
    for ext in [true, false] {
        let (mut a, mut b) = pair(true, ext, 64);
        let (id, ..) = open(&mut a, &mut b, 64);
        // The socket client closes; the socket server's data crosses its BYE.
        b.local_closed(id);
        let mut late = Vec::new();
        frame::encode_data(&mut late, id, b"late");
        Frame::Bye(id).encode(&mut late);
        if ext {
            Frame::Eof(id).encode(&mut late);
            Frame::Credit(id, 5).encode(&mut late);
        }
        b.receive(now, &late).expect("late frames are ignored");
        assert!(b.take_events().is_empty());
        // And for ids never seen.
        let mut unknown = Vec::new();
        frame::encode_data(&mut unknown, 999, b"x");
        Frame::Bye(999).encode(&mut unknown);
        b.receive(now, &unknown).expect("ignored");
        let mut c = Vec::new();
        Frame::Connect(999).encode(&mut c);
        a.receive(now, &c).expect("ignored");
        assert!(a.take_events().is_empty() && b.take_events().is_empty());
    }
}

#[test]
fn ping_at_50_s_drop_at_60_s_and_any_byte_resets_the_clock() {
    let start = t0();
    let (mut a, _) = pair(true, false, 64);
    // `pair` ran at its own instant; restart the clock here.
    a.receive(start, b"!").expect("pong");
    let s = |secs| start + Duration::from_secs(secs);
    assert_eq!(a.next_deadline(), s(50));
    a.on_timer(s(49)).expect("quiet");
    assert!(a.output().is_empty());
    a.on_timer(s(50)).expect("ping");
    assert_eq!(a.output(), b"?");
    a.consume_output(1);
    a.on_timer(s(55)).expect("one ping only");
    assert!(a.output().is_empty());
    assert_eq!(a.next_deadline(), s(60));
    assert_eq!(a.on_timer(s(60)), Err(TunnelError::IdleTimeout));
    // The answer resets it.
    a.receive(s(59), b"!").expect("pong");
    a.on_timer(s(60)).expect("alive");
    assert_eq!(a.next_deadline(), s(109));
    // A PING is answered.
    a.receive(s(61), b"?").expect("ping");
    assert_eq!(a.output(), b"!");
}

#[test]
fn the_handshake_times_out() {
    let start = t0();
    for listener in [true, false] {
        let mut t = Tunnel::new(Role::SocketClient, listener, true, start);
        assert_eq!(t.next_deadline(), start + HANDSHAKE_TIMEOUT);
        t.receive(start, b"I").expect("half an ident");
        t.on_timer(start + HANDSHAKE_TIMEOUT - Duration::from_millis(1)).expect("not yet");
        assert_eq!(t.on_timer(start + HANDSHAKE_TIMEOUT), Err(TunnelError::HandshakeTimeout));
    }
}

#[test]
fn an_originals_answer_to_our_ping_is_not_a_probe() {
    let start = t0();
    let mut t = Tunnel::new(Role::SocketServer, true, true, start);
    t.receive(start, b"IC").expect("ident");
    t.on_timer(start + PING_AFTER).expect("ping");
    t.receive(start + PING_AFTER, b"!").expect("pong");
    t.on_timer(start + PING_AFTER * 2).expect("ping");
    t.receive(start + PING_AFTER * 2, b"!").expect("pong");
    assert_eq!(t.capability(), Capability::Original);
    let mut e = Vec::new();
    Frame::Eof(1).encode(&mut e);
    assert!(t.receive(start + PING_AFTER * 2, &e).is_err());
}

#[test]
fn a_peer_that_never_reads_pings_cannot_grow_the_output_unseen() {
    // The caller bounds the output (it stops reading the link while the
    // output is large); the tunnel answers one PONG per PING, no more.
    let now = t0();
    let (mut a, _) = pair(true, false, 64);
    a.receive(now, &[b'?'; 1000]).expect("pings");
    assert_eq!(a.output().len(), 1000);
}
