//! The Engine API client against stub daemons on a Unix socket.

use super::*;

/// One frame of Docker's multiplexed log stream, as the daemon sends it.
pub(crate) fn frame(stream: u8, text: &str) -> Vec<u8> {
    let mut f = vec![stream, 0, 0, 0];
    f.extend_from_slice(&(text.len() as u32).to_be_bytes());
    f.extend_from_slice(text.as_bytes());
    f
}

#[test]
fn a_daemon_that_stops_answering_is_named_with_the_call_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    // Accepts (the kernel does, even for a stopped dockerd) and never answers.
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let engine = Engine::new("msh1", &socket);
    let t = std::time::Instant::now();
    let phase = Deadline::phase(t + Duration::from_millis(300));
    let e = format!("{:#}", engine.get_json("/nodes", phase).unwrap_err());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(
        e.starts_with("GET /nodes on msh1 did not answer within 0.3 s (the phase's deadline)"),
        "{e}"
    );
    // A limit of the call's own that ends sooner is named instead.
    let own = Deadline::phase(t + Duration::from_secs(60)).within(Duration::from_millis(200));
    let e = format!(
        "{:#}",
        engine
            .request("POST", "/swarm/update", None, own)
            .unwrap_err()
    );
    assert!(e.contains("within 0.2 s (its own limit of 0.2 s)"), "{e}");
    // With the deadline passed, nothing is sent: curl would take a zero timeout as none.
    let passed = Deadline::phase(t);
    let t = std::time::Instant::now();
    let e = format!("{:#}", engine.get_json("/info", passed).unwrap_err());
    assert!(t.elapsed() < Duration::from_millis(100));
    assert_eq!(
        e,
        "GET /info on msh1 was not sent: the phase's deadline had passed"
    );
}

#[test]
fn a_manager_without_quorum_is_named_with_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    const NO_LEADER: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
        Content-Length: 80\r\nConnection: close\r\n\r\n\
        {\"message\":\"rpc error: code = Unknown desc = The swarm does not have a leader.\"}";
    let server = daemon(&socket, vec![NO_LEADER], Duration::ZERO);
    let engine = Engine::new("msh1", &socket);
    let phase = Deadline::phase(std::time::Instant::now() + Duration::from_secs(5));
    let e = engine.get_json("/nodes", phase).unwrap_err();
    server.join().unwrap();
    let refusal = e.downcast_ref::<EngineError>().unwrap();
    assert_eq!((refusal.status, refusal.call.as_str()), (503, "GET /nodes"));
    let e = format!("{e:#}");
    assert_eq!(
        e,
        "the Docker daemon on msh1 answered GET /nodes with 503: rpc error: code = Unknown \
         desc = The swarm does not have a leader."
    );
}

/// Reads a request's line and headers, up to the empty line that ends them.
fn read_headers(reader: &mut impl std::io::BufRead) {
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 2 {
        line.clear();
    }
}

/// A daemon that answers each of `replies` connections with the bytes given and keeps
/// them open (a stream that stops sending) until `hold` after the last.
fn daemon(
    socket: &Path,
    replies: Vec<&'static str>,
    hold: Duration,
) -> std::thread::JoinHandle<()> {
    use std::io::Write;
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let mut open = Vec::new();
        for reply in replies {
            let (stream, _) = listener.accept().unwrap();
            read_headers(&mut std::io::BufReader::new(&stream));
            (&stream).write_all(reply.as_bytes()).unwrap();
            open.push(stream);
        }
        std::thread::sleep(hold);
    })
}

const STALLED: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst \r\n";

#[test]
fn a_body_is_cut_at_its_cap_or_kept_as_far_as_it_came_only_where_asked() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let whole = "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world";
    let hold = Duration::from_millis(600);
    let server = daemon(&socket, vec![whole, STALLED, STALLED, STALLED], hold);
    let engine = Engine::new("msh1", &socket);
    let soon = || Deadline::phase(std::time::Instant::now() + Duration::from_millis(300));
    let (r, body) = engine.get_bounded("/logs", 5, soon()).unwrap();
    assert_eq!(
        (r.status, body, &r.body[..]),
        (200, Body::Capped, &b"hello"[..])
    );
    // A stream that stops: kept as far as it came where asked, else the call fails.
    let (r, body) = engine.get_bounded("/logs", 1 << 20, soon()).unwrap();
    assert_eq!(
        (r.status, body, &r.body[..]),
        (200, Body::TimedOut, &b"first "[..])
    );
    let e = format!(
        "{:#}",
        engine.get_capped("/logs", 1 << 20, soon()).unwrap_err()
    );
    assert!(
        e.starts_with("GET /logs on msh1 was still sending at"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        engine.request("GET", "/logs", None, soon()).unwrap_err()
    );
    assert!(
        e.starts_with("GET /logs on msh1 did not answer within 0.3 s"),
        "{e}"
    );
    server.join().unwrap();
}

#[test]
fn a_streamed_body_reaches_the_daemon_whole() {
    use std::io::{Read as _, Write};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = std::io::BufReader::new(&stream);
        read_headers(&mut reader);
        // As Go's server does for a body sent after `Expect: 100-continue`.
        (&stream)
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .unwrap();
        // One chunk, then the last (empty) one: the whole body in chunked encoding.
        let mut rest = String::new();
        while !rest.ends_with("0\r\n\r\n") {
            let mut byte = [0u8];
            reader.read_exact(&mut byte).unwrap();
            rest.push(byte[0] as char);
        }
        (&stream)
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap();
        rest
    });
    let engine = Engine::new("msh1", &socket);
    let deadline = Deadline::phase(std::time::Instant::now() + Duration::from_secs(5));
    let mut source: &[u8] = b"archive bytes";
    let r = engine
        .post_stream("/images/load", "application/x-tar", &mut source, deadline)
        .unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    assert!(server.join().unwrap().contains("archive bytes"));
}

#[test]
fn frame_headers_are_stripped_and_streams_named() {
    let mut body = frame(1, "2026-01-01T00:00:00.000000001Z hello\n");
    body.extend(frame(2, "2026-01-01T00:00:00.000000002Z oops\n"));
    let got = frames(&body);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, "stdout");
    assert_eq!(
        got[1],
        ("stderr", &b"2026-01-01T00:00:00.000000002Z oops\n"[..])
    );
    // A TTY stream has no headers; a cut frame keeps what arrived.
    assert_eq!(frames(b"plain text\n"), vec![("tty", &b"plain text\n"[..])]);
    let cut = &body[..body.len() - 3];
    assert_eq!(frames(cut)[1].1, b"2026-01-01T00:00:00.000000002Z oo");
}
