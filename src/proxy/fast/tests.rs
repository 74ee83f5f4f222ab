//! The fast path's unit tests: what it takes, and lines kept as written.

use super::*;

#[test]
fn connection_options_the_fast_path_takes() {
    let options = |close, keep_alive| Some(ConnectionOptions { close, keep_alive, others: false });
    for (value, want) in [
        (&b"close"[..], options(true, false)),
        (b"Keep-Alive", options(false, true)),
        (b"keep-alive, close", options(true, true)),
        (b" , ", options(false, false)),
        (b"close, X-Foo", None),
        (b"upgrade", None),
    ] {
        let got = ConnectionOptions::default().with(value).only_known();
        assert_eq!(got, want, "{}", String::from_utf8_lossy(value));
    }
}

#[test]
fn kept_lines_are_copied_as_written() {
    let head = b"GET / HTTP/1.1\r\nA: 1\r\nDrop: x\r\nB:  two \r\nC:\r\nD: 4\nE: 5\r\n\r\n";
    let mut fields = [httparse::EMPTY_HEADER; 8];
    let mut req = httparse::Request::new(&mut fields);
    assert!(req.parse(head).unwrap().is_complete());
    let mut out = Vec::new();
    let mut lines = Lines::new(head);
    for field in req.headers.iter() {
        if field.name == "Drop" {
            lines.flush(&mut out);
        } else {
            lines.keep(&mut out, field);
        }
    }
    lines.flush(&mut out);
    // A line that ended in a bare LF is written afresh, with CRLF.
    assert_eq!(String::from_utf8(out).unwrap(), "A: 1\r\nB:  two \r\nC:\r\nD: 4\r\nE: 5\r\n");
}

#[test]
fn names_are_lowered_when_they_fit() {
    let mut into = [0u8; 32];
    assert_eq!(policy::lowered("X-Auth-Token", &mut into), Some("x-auth-token"));
    assert_eq!(policy::lowered(&"x".repeat(33), &mut into), None);
    assert_eq!(policy::lowered("X-Métadonnée-Ü", &mut into), Some("x-métadonnée-Ü"), "only A-Z change");
}

#[test]
fn target_bytes_are_those_the_uri_parser_takes() {
    for b in 0..=255u8 {
        if plain_target_byte(b) {
            let target = [b'/', b'a', b, b'b'];
            assert!(http::uri::PathAndQuery::try_from(&target[..]).is_ok(), "byte {b:#x}");
        }
    }
    let taken = "/v1/AUTH_a/c/o%20b?format=json&x=~!$'()*+,;=:@";
    assert!(taken.bytes().all(plain_target_byte));
    for refused in ["/a b", "/a\"b", "/a{b", "/a|b", "/a\x7f", "/\u{e9}"] {
        assert!(!refused.bytes().all(plain_target_byte), "{refused}");
    }
}

#[test]
fn a_target_that_is_not_utf8_is_answered_only_when_safe() {
    let answered = |head: &[u8]| matches!(invalid_path(head), Look::InvalidPath { .. });
    assert!(answered(b"PUT /v1/AUTH_a/\xff\xfe HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n"));
    assert!(answered(b"GET /v1/AUTH_a/\xff HTTP/1.1\r\nHost: gw\r\n\r\n"));
    // Not whole yet.
    assert!(matches!(invalid_path(b"GET /v1/\xff HTTP/1.1\r\nHost:"), Look::Partial));
    // A body, HTTP/1.0, a request line hyper would refuse anyway: hyper answers.
    assert!(!answered(b"PUT /v1/\xff HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"));
    assert!(!answered(b"PUT /v1/\xff HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"));
    assert!(!answered(b"GET /v1/\xff HTTP/1.0\r\n\r\n"));
    assert!(!answered(b"GET /v1/\xff\x01 HTTP/1.1\r\n\r\n"));
    // A request line past the head limit: declined, never a slice out of range.
    let mut long = b"GET /\xff".to_vec();
    long.resize(crate::server::MAX_HEAD + 100, b'a');
    long.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    assert!(matches!(invalid_path(&long), Look::Decline));
}
