//! Property tests for every decoder in sapper-shared that reads bytes a peer
//! controls: stream framing, the protobuf message types of the control,
//! management and privd channels, the handshake judge, IP header parsing,
//! ping/pong bookkeeping, and the config parser with credential expansion.
//!
//! These run in CI with `cargo test -p sapper-shared`. The cargo-fuzz targets
//! in `fuzz/` exercise the same entry points for longer, coverage-guided runs.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use prost::Message;
use sapper_shared::config::{Config, Transport};
use sapper_shared::framing::{
    self, body_len, FrameDecoder, FrameError, HEADER_LEN, MAX_CONTROL_FRAME,
};
use sapper_shared::handshake::{Handshaker, Reject, MAX_NAME_LEN, MAX_ROUTES};
use sapper_shared::latency::{pong_for, Latency};
use sapper_shared::proof::{ChannelBinding, Side, BINDING_LEN, PROOF_LEN};
use sapper_shared::proto::control::{self, control_message, ControlMessage};
use sapper_shared::proto::data::{Capabilities, Handshake, Ping, Pong, RoleHint};
use sapper_shared::proto::{management, privd};
use sapper_shared::psk::Psk;
use sapper_shared::routing;
use sapper_shared::PROTOCOL_VERSION;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

// ---------------------------------------------------------------------------
// Allocation probe: the largest single allocation made by the current thread
// while a probe is armed. Lets the oversize-frame property observe that the
// decoder never reserves room for an announced body it refuses. Per thread,
// so tests running in parallel do not disturb each other.
// ---------------------------------------------------------------------------

struct PeakAlloc;

thread_local! {
    static PROBE_ARMED: Cell<bool> = const { Cell::new(false) };
    static PROBE_PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    let _ = PROBE_ARMED.try_with(|armed| {
        if armed.get() {
            let _ = PROBE_PEAK.try_with(|p| p.set(p.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the probe
// only touches const-initialised thread-locals without destructors, which
// never allocate.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

/// Runs `f` and returns its result with the largest single allocation it made
/// on this thread.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PROBE_PEAK.with(|p| p.set(0));
    PROBE_ARMED.with(|a| a.set(true));
    let out = f();
    PROBE_ARMED.with(|a| a.set(false));
    (out, PROBE_PEAK.with(|p| p.get()))
}

// ---------------------------------------------------------------------------
// Shared helpers and strategies
// ---------------------------------------------------------------------------

/// Proptest settings: `cases` cases; failing inputs are saved next to this
/// file as `decoders.proptest-regressions` and replayed first on later runs.
fn cases(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// Frames `body` by hand (independently of `framing::encode`).
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Splits `bytes` at the given cut points (taken modulo the length).
fn split_at_points(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| c % (bytes.len() + 1))
        .chain([0, bytes.len()])
        .collect();
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

/// What a stream decoder must produce for `stream`: the frames it contains,
/// then either an error for the first oversize header or nothing (waiting).
fn reference_frames(stream: &[u8], max: usize) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut frames = Vec::new();
    let mut rest = stream;
    while rest.len() >= HEADER_LEN {
        let len = u32::from_be_bytes(rest[..HEADER_LEN].try_into().unwrap()) as usize;
        if len > max {
            return (frames, Some(FrameError::TooLarge { len, max }));
        }
        if rest.len() < HEADER_LEN + len {
            break;
        }
        frames.push(rest[HEADER_LEN..HEADER_LEN + len].to_vec());
        rest = &rest[HEADER_LEN + len..];
    }
    (frames, None)
}

/// Pushes `chunks` one by one, draining complete frames after each push as a
/// reader would. Stops at the first error.
fn drive_decoder(
    max: usize,
    chunks: &[Vec<u8>],
) -> Result<(Vec<Vec<u8>>, Option<FrameError>), TestCaseError> {
    let mut d = FrameDecoder::new(max);
    let mut frames = Vec::new();
    for chunk in chunks {
        d.push(chunk);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    prop_assert!(f.len() <= max, "frame of {} > max {}", f.len(), max);
                    frames.push(f);
                }
                Ok(None) => break,
                Err(e) => {
                    // Framing is lost: the decoder must not resynchronise on
                    // the bytes that follow.
                    let again = d.next_frame();
                    prop_assert_eq!(again.as_ref().err(), Some(&e));
                    return Ok((frames, Some(e)));
                }
            }
        }
    }
    Ok((frames, None))
}

/// Byte-level damage applied to a valid encoding, to reach decoder paths that
/// uniformly random bytes rarely get to.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len();
        match *m {
            Mutation::Flip(i, x) if n > 0 => bytes[i % n] ^= x,
            Mutation::Set(i, b) if n > 0 => bytes[i % n] = b,
            Mutation::Insert(i, b) => bytes.insert(i % (n + 1), b),
            Mutation::Remove(i) if n > 0 => {
                bytes.remove(i % n);
            }
            Mutation::Truncate(i) => bytes.truncate(i % (n + 1)),
            _ => {}
        }
    }
    bytes
}

/// Decodes `bytes` as `M`; when that succeeds, the canonical re-encoding must
/// decode again and re-encode to the same bytes (no panics, no drift).
fn decode_and_reencode<M: Message + Default>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(m) = framing::decode::<M>(bytes) {
        let canonical = m.encode_to_vec();
        let again = framing::decode::<M>(&canonical);
        prop_assert!(again.is_ok(), "canonical encoding failed to decode");
        prop_assert_eq!(again.unwrap().encode_to_vec(), canonical);
    }
    Ok(())
}

/// Short strings, mostly printable, sometimes anything.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9 ._:/-]{0,24}",
        1 => any::<String>(),
    ]
}

fn cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, l)| format!("{}/{l}", Ipv4Addr::from(a))),
        (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, l)| format!("{}/{l}", Ipv6Addr::from(a))),
    ]
}

/// Route strings as a peer might send them: mostly valid CIDR, sometimes not.
fn route() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => cidr(),
        1 => (any::<[u8; 4]>(), 33u8..=255).prop_map(|(a, l)| format!("{}/{l}", Ipv4Addr::from(a))),
        1 => any::<[u8; 4]>().prop_map(|a| Ipv4Addr::from(a).to_string()),
        1 => text(),
    ]
}

fn enum_value() -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0i32..=5, 1 => any::<i32>()]
}

fn capabilities() -> impl Strategy<Value = Capabilities> {
    any::<[bool; 4]>().prop_map(|[tun_capable, listening, connecting, super_packets]| {
        Capabilities {
            tun_capable,
            listening,
            connecting,
            super_packets,
        }
    })
}

fn role_hint() -> impl Strategy<Value = RoleHint> {
    (enum_value(), enum_value()).prop_map(|(level, target)| RoleHint { level, target })
}

/// Node names: valid ones, boundary lengths and arbitrary text.
fn node_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-zA-Z0-9._-]{1,64}",
        1 => "[a-zA-Z0-9._-]{64,70}",
        1 => Just(String::new()),
        2 => any::<String>(),
        1 => "[a-z]{1,10}[ /:\\n\\x00\u{e9}][a-z]{0,10}",
    ]
}

fn routes() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        20 => prop::collection::vec(route(), 0..8),
        1 => prop::collection::vec(cidr(), MAX_ROUTES - 2..=MAX_ROUTES + 2),
    ]
}

/// Any Handshake a peer could send (proof left empty).
fn handshake() -> impl Strategy<Value = Handshake> {
    (
        prop::option::weighted(0.9, capabilities()),
        node_name(),
        prop_oneof![9 => Just(PROTOCOL_VERSION), 1 => any::<u32>()],
        routes(),
        prop::option::of(role_hint()),
        text(),
    )
        .prop_map(
            |(capabilities, name, version, routes, hint, software)| Handshake {
                capabilities,
                name,
                version,
                psk_proof: vec![],
                routes,
                hint,
                software,
                addresses: vec![],
            },
        )
}

/// A Handshake that passes validation.
fn valid_handshake() -> impl Strategy<Value = Handshake> {
    (
        capabilities(),
        "[a-zA-Z0-9._-]{1,64}",
        prop::collection::vec(cidr(), 0..6),
        prop::option::of(role_hint()),
        text(),
    )
        .prop_map(|(caps, name, routes, hint, software)| Handshake {
            capabilities: Some(caps),
            name,
            version: PROTOCOL_VERSION,
            psk_proof: vec![],
            routes,
            hint,
            software,
            addresses: vec![],
        })
}

fn psk() -> impl Strategy<Value = Psk> {
    prop::collection::vec(any::<u8>(), 16..48)
        .prop_filter_map("PSK too short after trimming", |k| {
            Psk::new(Zeroizing::new(k)).ok()
        })
}

fn binding() -> impl Strategy<Value = ChannelBinding> {
    any::<[u8; BINDING_LEN]>().prop_map(ChannelBinding)
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Client), Just(Side::Server)]
}

fn control_message() -> impl Strategy<Value = ControlMessage> {
    use control_message::Body;
    let body = prop_oneof![
        handshake().prop_map(Body::Handshake),
        any::<u64>().prop_map(|t| Body::Ping(Ping { timestamp_ms: t })),
        any::<u64>().prop_map(|t| Body::Pong(Pong { timestamp_ms: t })),
        (prop::collection::vec(route(), 0..6), text()).prop_map(|(prefixes, origin)| {
            Body::RouteUpdate(control::RouteUpdate { prefixes, origin })
        }),
        (prop::collection::vec(route(), 0..6), text()).prop_map(|(prefixes, origin)| {
            Body::RouteWithdraw(control::RouteWithdraw { prefixes, origin })
        }),
        (enum_value(), text(), prop::option::of(role_hint())).prop_map(|(role, reason, hint)| {
            Body::RoleTransition(control::RoleTransition { role, reason, hint })
        }),
        text().prop_map(|reason| Body::Disconnect(control::Disconnect { reason })),
        (enum_value(), text())
            .prop_map(|(code, message)| Body::Error(control::ControlError { code, message })),
    ];
    prop::option::weighted(0.95, body).prop_map(|body| ControlMessage { body })
}

fn management_request() -> impl Strategy<Value = management::Request> {
    use management::request::Body;
    use management::*;
    let body = prop_oneof![
        Just(Body::Status(StatusRequest {})),
        Just(Body::Peers(PeersRequest::default())),
        Just(Body::Stats(StatsRequest {})),
        Just(Body::Routes(RoutesRequest::default())),
        text().prop_map(|peer| Body::Ping(PingRequest { peer })),
        (text(), text(), text(), text(), text()).prop_map(
            |(address, transport, fingerprint, server_name, ws_path)| {
                Body::Connect(ConnectRequest {
                    address,
                    transport,
                    fingerprint,
                    server_name,
                    ws_path,
                })
            }
        ),
        (text(), text(), text()).prop_map(|(address, transport, ws_path)| {
            Body::Listen(ListenRequest {
                address,
                transport,
                ws_path,
            })
        }),
        prop::option::of(role_hint()).prop_map(|hint| Body::Hint(HintRequest { hint })),
        (text(), any::<bool>())
            .prop_map(|(peer, stay)| Body::Disconnect(DisconnectRequest { peer, stay })),
        Just(Body::Shutdown(ShutdownRequest {})),
        Just(Body::Subscribe(SubscribeRequest {})),
        (route(), any::<bool>())
            .prop_map(|(prefix, add)| Body::RouteChange(RouteChangeRequest { prefix, add })),
    ];
    (any::<u64>(), prop::option::weighted(0.95, body))
        .prop_map(|(id, body)| management::Request { id, body })
}

/// Responses only travel from netd to sapperctl, so this strategy fills the
/// fields that matter for decoding (strings, doubles, nesting) and leaves the
/// rest default; request and control strategies above set every field.
fn management_response() -> impl Strategy<Value = management::Response> {
    use management::response::Body;
    use management::*;
    let peer = (text(), text(), any::<f64>(), any::<[u64; 4]>())
        .prop_map(|(name, address, lat, [bi, bo, pi, po])| PeerInfo {
            name,
            address,
            transport: "quic".into(),
            capabilities: Some(Capabilities::default()),
            role: 1,
            latency_ms: Some(lat),
            bytes_in: bi,
            bytes_out: bo,
            packets_in: pi,
            packets_out: po,
            connected_at: 0,
            drops: 0,
            routes: vec!["10.0.0.0/8".into()],
            outbound: true,
            link_reason: "one peer is TUN-capable, the other is not".into(),
            ..Default::default()
        })
        .boxed();
    let body = prop_oneof![
        (enum_value(), text()).prop_map(|(code, message)| Body::Error(Error { code, message })),
        Just(Body::Ok(Ok {})),
        (text(), enum_value(), any::<u64>()).prop_map(|(name, role, uptime_s)| {
            Body::Status(StatusResponse {
                name,
                role,
                uptime_s,
                listeners: vec![ListenerInfo {
                    address: "0.0.0.0:4433".into(),
                    transport: "quic".into(),
                }],
                tun: Some(TunInfo {
                    name: "sapper0".into(),
                    addresses: vec!["10.99.0.1/24".into()],
                    mtu: 1280,
                    offloads: vec!["csum".into(), "tso4".into()],
                }),
                ..Default::default()
            })
        }),
        prop::collection::vec(peer.clone(), 0..3)
            .prop_map(|peers| Body::Peers(PeersResponse { peers, total: 0 })),
        (any::<f64>(), text()).prop_map(|(rtt_ms, peer)| Body::Ping(PingResponse { rtt_ms, peer })),
        (any::<u64>(), peer).prop_map(|(timestamp_ms, p)| Body::Event(Event {
            timestamp_ms,
            body: Some(event::Body::PeerConnected(p)),
        })),
    ];
    (any::<u64>(), prop::option::weighted(0.95, body))
        .prop_map(|(id, body)| management::Response { id, body })
}

fn privd_request() -> impl Strategy<Value = privd::PrivRequest> {
    use privd::priv_request::Body;
    let body = prop_oneof![
        Just(Body::OpenTun(privd::OpenTun {})),
        (route(), any::<bool>())
            .prop_map(|(prefix, add)| Body::RouteChange(privd::RouteChange { prefix, add })),
        Just(Body::Status(privd::StatusQuery {})),
    ];
    prop::option::weighted(0.95, body).prop_map(|body| privd::PrivRequest { body })
}

fn privd_response() -> impl Strategy<Value = privd::PrivResponse> {
    use privd::priv_response::Body;
    let body = prop_oneof![
        (text(), any::<u32>(), prop::collection::vec(route(), 0..4)).prop_map(
            |(name, mtu, addresses)| Body::TunOpened(privd::TunOpened {
                name,
                mtu,
                addresses,
                ..Default::default()
            })
        ),
        (route(), any::<bool>())
            .prop_map(|(prefix, add)| Body::RouteChanged(privd::RouteChange { prefix, add })),
        (
            text(),
            prop::collection::vec(route(), 0..4),
            any::<[u64; 3]>()
        )
            .prop_map(|(tun_name, routes, [granted, refused, audit_suppressed])| {
                Body::Status(privd::PrivStatus {
                    tun_name,
                    routes,
                    nat_active: true,
                    granted,
                    refused,
                    forwarding: false,
                    audit_suppressed,
                    ..Default::default()
                })
            }),
        (0..8i32, text()).prop_map(|(code, detail)| Body::Refused(privd::Refusal { code, detail })),
    ];
    prop::option::weighted(0.95, body).prop_map(|body| privd::PrivResponse { body })
}

// ---------------------------------------------------------------------------
// framing
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(512))]

    /// Arbitrary chunks never panic the decoder, no frame exceeds the limit,
    /// and the decoder agrees with a straightforward reading of the stream.
    #[test]
    fn frame_decoder_arbitrary_chunks(
        max in prop_oneof![0usize..=64, 0usize..=4096, Just(MAX_CONTROL_FRAME)],
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..96), 0..24),
    ) {
        let got = drive_decoder(max, &chunks)?;
        prop_assert_eq!(got, reference_frames(&chunks.concat(), max));
    }

    /// Streams whose headers announce small lengths, so many frames complete
    /// (uniform bytes almost always announce a huge length and stop at once).
    #[test]
    fn frame_decoder_small_headers_chunks(
        max in 0usize..=32,
        pieces in prop::collection::vec((0u32..=40, prop::collection::vec(any::<u8>(), 0..40)), 0..16),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut stream = Vec::new();
        for (len, bytes) in &pieces {
            stream.extend_from_slice(&len.to_be_bytes());
            stream.extend_from_slice(bytes);
        }
        let chunks = split_at_points(&stream, &cuts);
        let got = drive_decoder(max, &chunks)?;
        prop_assert_eq!(got, reference_frames(&stream, max));
    }

    /// Valid frames split at arbitrary points decode back to the same bodies.
    #[test]
    fn frame_decoder_round_trip(
        max in 0usize..=2048,
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..512), 0..12),
        cuts in prop::collection::vec(any::<usize>(), 0..32),
    ) {
        let bodies: Vec<Vec<u8>> = bodies
            .into_iter()
            .map(|mut b| { b.truncate(max); b })
            .collect();
        let stream: Vec<u8> = bodies.iter().flat_map(|b| frame(b)).collect();
        let chunks = split_at_points(&stream, &cuts);
        prop_assert_eq!(chunks.concat(), stream.clone());
        let (frames, err) = drive_decoder(max, &chunks)?;
        prop_assert_eq!(err, None);
        prop_assert_eq!(frames, bodies);
    }

    /// Encoded control messages survive framing at arbitrary split points and
    /// decode to the messages that were sent.
    #[test]
    fn control_messages_round_trip_through_framing(
        msgs in prop::collection::vec(control_message(), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(framing::encode).collect();
        let chunks = split_at_points(&stream, &cuts);
        let (frames, err) = drive_decoder(MAX_CONTROL_FRAME, &chunks)?;
        prop_assert_eq!(err, None);
        let decoded: Vec<ControlMessage> = frames
            .iter()
            .map(|f| framing::decode(f))
            .collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decoded, msgs);
    }

    /// A header announcing more than the limit is refused as soon as the
    /// header is in, without waiting for or reserving room for the body.
    #[test]
    fn frame_decoder_oversize_refused_without_allocating(
        max in prop_oneof![Just(1024usize), 1024usize..=MAX_CONTROL_FRAME, Just(1 << 20)],
        excess in prop_oneof![Just(1u64), 1u64..=4096, any::<u64>()],
        prefix_frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..32), 0..3),
        trailing in prop::collection::vec(any::<u8>(), 0..64),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let len = (max as u64).saturating_add(excess).min(u64::from(u32::MAX));
        prop_assume!(len > max as u64);
        let len = len as usize;
        let mut stream: Vec<u8> = prefix_frames.iter().flat_map(|b| frame(b)).collect();
        let header_end = stream.len() + HEADER_LEN;
        stream.extend_from_slice(&(len as u32).to_be_bytes());
        stream.extend_from_slice(&trailing);
        let chunks = split_at_points(&stream, &cuts);

        let pushed = stream.len();
        let (result, peak) = peak_alloc(|| {
            let mut d = FrameDecoder::new(max);
            let mut frames = Vec::new();
            let mut fed = 0;
            for chunk in &chunks {
                let before = fed;
                d.push(chunk);
                fed += chunk.len();
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => frames.push(f),
                        Ok(None) => break,
                        Err(e) => return (frames, Some((e, before, fed))),
                    }
                }
            }
            (frames, None)
        });
        let (frames, err) = result;
        prop_assert_eq!(frames, prefix_frames);
        let (err, before, fed) = err.expect("oversize header not refused");
        prop_assert_eq!(err, FrameError::TooLarge { len, max });
        // Refused on the very push that completed the header.
        prop_assert!(before < header_end && header_end <= fed);
        // Buffering is proportional to what was pushed, never to `len` (the
        // slack covers this closure's own `frames` vector). `max` is at least
        // 1024, above this bound, so a reservation toward `len` would show.
        let bound = 4 * pushed + 256;
        prop_assert!(bound < max);
        prop_assert!(
            peak <= bound,
            "largest allocation {} > {} (pushed {}, announced {})", peak, bound, pushed, len
        );
    }

    /// `body_len` accepts exactly the lengths up to the limit.
    #[test]
    fn body_len_checks_limit(header in any::<[u8; HEADER_LEN]>(), max in any::<usize>()) {
        let len = u32::from_be_bytes(header) as usize;
        match body_len(header, max) {
            Ok(n) => { prop_assert_eq!(n, len); prop_assert!(n <= max); }
            Err(e) => {
                prop_assert!(len > max);
                prop_assert_eq!(e, FrameError::TooLarge { len, max });
            }
        }
    }
}

/// The refusal happens on the push that completes the header: the decoder
/// answers `TooLarge` rather than `None` when only the header has arrived.
#[test]
fn oversize_refused_on_header_alone() {
    for max in [0usize, 1, 1024, MAX_CONTROL_FRAME] {
        let mut d = FrameDecoder::new(max);
        let header = ((max + 1) as u32).to_be_bytes();
        d.push(&header[..HEADER_LEN - 1]);
        assert_eq!(d.next_frame(), Ok(None));
        d.push(&header[HEADER_LEN - 1..]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: max + 1, max })
        );
    }
}

// ---------------------------------------------------------------------------
// protobuf decoders
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(1000))]

    /// Arbitrary bytes never panic any message decoder.
    #[test]
    fn decode_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_and_reencode::<ControlMessage>(&bytes)?;
        decode_and_reencode::<Handshake>(&bytes)?;
        decode_and_reencode::<management::Request>(&bytes)?;
        decode_and_reencode::<management::Response>(&bytes)?;
        decode_and_reencode::<privd::PrivRequest>(&bytes)?;
        decode_and_reencode::<privd::PrivResponse>(&bytes)?;
    }
}

proptest! {
    #![proptest_config(cases(400))]

    /// Valid encodings round-trip, and damaged ones never panic.
    #[test]
    fn control_message_round_trip_and_damage(
        msg in control_message(),
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        let bytes = msg.encode_to_vec();
        prop_assert_eq!(framing::decode::<ControlMessage>(&bytes), Ok(msg));
        decode_and_reencode::<ControlMessage>(&mutate(bytes, &muts))?;
    }

    #[test]
    fn management_request_round_trip_and_damage(
        msg in management_request(),
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        let bytes = msg.encode_to_vec();
        prop_assert_eq!(framing::decode::<management::Request>(&bytes), Ok(msg));
        decode_and_reencode::<management::Request>(&mutate(bytes, &muts))?;
    }

    #[test]
    fn management_response_round_trip_and_damage(
        msg in management_response(),
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        let bytes = msg.encode_to_vec();
        // Compared as bytes: NaN latencies make the messages unequal to
        // themselves.
        let decoded = framing::decode::<management::Response>(&bytes)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decoded.encode_to_vec(), bytes.clone());
        decode_and_reencode::<management::Response>(&mutate(bytes, &muts))?;
    }

    #[test]
    fn privd_request_round_trip_and_damage(
        msg in privd_request(),
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        let bytes = msg.encode_to_vec();
        prop_assert_eq!(framing::decode::<privd::PrivRequest>(&bytes), Ok(msg));
        decode_and_reencode::<privd::PrivRequest>(&mutate(bytes, &muts))?;
    }

    #[test]
    fn privd_response_round_trip_and_damage(
        msg in privd_response(),
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        let bytes = msg.encode_to_vec();
        prop_assert_eq!(framing::decode::<privd::PrivResponse>(&bytes), Ok(msg));
        decode_and_reencode::<privd::PrivResponse>(&mutate(bytes, &muts))?;
    }
}

// ---------------------------------------------------------------------------
// packet headers
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(1000))]

    /// `routing::destination` reads the destination of any packet a peer or
    /// the TUN hands over without panicking, and only from a complete header.
    #[test]
    fn packet_destination_never_panics(
        packet in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            (prop::sample::select(&[0x45u8, 0x4f, 0x60, 0x6a][..]), prop::collection::vec(any::<u8>(), 0..48))
                .prop_map(|(first, rest)| [vec![first], rest].concat()),
        ],
    ) {
        let got = routing::destination(&packet);
        let want = match packet.first().map(|b| b >> 4) {
            Some(4) if packet.len() >= 20 => {
                Some(IpAddr::from(<[u8; 4]>::try_from(&packet[16..20]).unwrap()))
            }
            Some(6) if packet.len() >= 40 => {
                Some(IpAddr::from(<[u8; 16]>::try_from(&packet[24..40]).unwrap()))
            }
            _ => None,
        };
        prop_assert_eq!(got, want);
    }
}

// ---------------------------------------------------------------------------
// handshake
// ---------------------------------------------------------------------------

/// The validation rules from the handshake spec, restated independently.
fn expected_valid(h: &Handshake) -> bool {
    h.capabilities.is_some()
        && !h.name.is_empty()
        && h.name.len() <= MAX_NAME_LEN
        && h.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && h.routes.len() <= MAX_ROUTES
        && h.routes.iter().all(|r| r.parse::<ipnet::IpNet>().is_ok())
}

/// Delivers a framed message as a stream reader would, in arbitrary chunks.
fn deliver(frame_bytes: &[u8], cuts: &[usize]) -> Result<Vec<u8>, TestCaseError> {
    let chunks = split_at_points(frame_bytes, cuts);
    let (mut frames, err) = drive_decoder(MAX_CONTROL_FRAME, &chunks)?;
    prop_assert_eq!(err, None);
    prop_assert_eq!(frames.len(), 1);
    Ok(frames.remove(0))
}

proptest! {
    #![proptest_config(cases(384))]

    /// Random bytes never panic the judge and, with a PSK configured, are
    /// never accepted. A second call always reports AlreadyDone.
    #[test]
    fn handshake_receive_random_bytes(
        local in valid_handshake(),
        side in side(),
        binding in binding(),
        key in prop::option::of(psk()),
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let has_psk = key.is_some();
        let mut h = Handshaker::new(local, side, binding, key);
        let verdict = h.receive(&bytes);
        if has_psk {
            prop_assert!(verdict.is_err(), "random bytes accepted: {:?}", verdict);
        }
        if let Err(e) = &verdict {
            let _ = e.code();
        }
        prop_assert_eq!(h.receive(&bytes), Err(Reject::AlreadyDone));
    }

    /// A structurally valid Handshake carrying a forged proof (any bytes,
    /// any length) is never accepted by a side that holds a PSK.
    #[test]
    fn handshake_forged_proof_rejected(
        local in valid_handshake(),
        mut peer in valid_handshake(),
        side in side(),
        binding in binding(),
        key in psk(),
        forged in prop_oneof![
            prop::collection::vec(any::<u8>(), PROOF_LEN..=PROOF_LEN),
            prop::collection::vec(any::<u8>(), 0..80),
        ],
    ) {
        peer.psk_proof = forged.clone();
        let body = ControlMessage {
            body: Some(control_message::Body::Handshake(peer)),
        }
        .encode_to_vec();
        let mut h = Handshaker::new(local, side, binding, Some(key));
        let verdict = h.receive(&body);
        if forged.is_empty() {
            prop_assert_eq!(verdict, Err(Reject::MissingPsk));
        } else {
            prop_assert_eq!(verdict, Err(Reject::BadProof));
        }
    }

    /// Flipping any bits of any single byte of an honest proof is caught.
    #[test]
    fn handshake_flipped_proof_byte_is_bad_proof(
        client_hs in valid_handshake(),
        server_hs in valid_handshake(),
        binding in binding(),
        key in psk(),
        sender in side(),
        index in 0usize..PROOF_LEN,
        mask in 1u8..,
    ) {
        let sender_h = Handshaker::new(
            if sender == Side::Client { client_hs.clone() } else { server_hs.clone() },
            sender,
            binding,
            Some(key.clone()),
        );
        let mut msg = sender_h.outgoing();
        let Some(control_message::Body::Handshake(hs)) = msg.body.as_mut() else {
            return Err(TestCaseError::fail("outgoing is not a Handshake"));
        };
        prop_assert_eq!(hs.psk_proof.len(), PROOF_LEN);
        hs.psk_proof[index] ^= mask;

        let receiver = sender.peer();
        let mut receiver_h = Handshaker::new(
            if receiver == Side::Client { client_hs } else { server_hs },
            receiver,
            binding,
            Some(key),
        );
        prop_assert_eq!(receiver_h.receive(&msg.encode_to_vec()), Err(Reject::BadProof));
    }

    /// Damage anywhere in an honest handshake frame body is either rejected
    /// or leaves the accepted content identical to what the sender signed.
    #[test]
    fn handshake_damaged_body_never_accepts_altered_content(
        client_hs in valid_handshake(),
        server_hs in valid_handshake(),
        binding in binding(),
        key in psk(),
        muts in prop::collection::vec(mutation(), 1..3),
    ) {
        let client = Handshaker::new(client_hs, Side::Client, binding, Some(key.clone()));
        let sent = client.outgoing();
        let body = mutate(sent.encode_to_vec(), &muts);
        let mut server = Handshaker::new(server_hs, Side::Server, binding, Some(key));
        if let Ok(acc) = server.receive(&body) {
            prop_assert_eq!(
                Some(control_message::Body::Handshake(acc.peer)),
                sent.body
            );
        }
    }

    /// An honest exchange over framing either accepts on both sides, or the
    /// side receiving an invalid Handshake rejects it as Malformed; which one
    /// happens depends only on the received Handshake's fields.
    #[test]
    fn handshake_honest_exchange_is_consistent(
        client_hs in handshake(),
        server_hs in handshake(),
        binding in binding(),
        key in prop::option::of(psk()),
        cuts_c in prop::collection::vec(any::<usize>(), 0..8),
        cuts_s in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut client = Handshaker::new(client_hs.clone(), Side::Client, binding, key.clone());
        let mut server = Handshaker::new(server_hs.clone(), Side::Server, binding, key);
        let to_server = deliver(&client.outgoing_frame(), &cuts_c)?;
        let to_client = deliver(&server.outgoing_frame(), &cuts_s)?;
        let at_server = server.receive(&to_server);
        let at_client = client.receive(&to_client);

        for (verdict, sent_hs) in [(&at_server, &client_hs), (&at_client, &server_hs)] {
            if sent_hs.version != PROTOCOL_VERSION {
                prop_assert_eq!(
                    verdict,
                    &Err(Reject::VersionMismatch { ours: PROTOCOL_VERSION, theirs: sent_hs.version })
                );
            } else if expected_valid(sent_hs) {
                let acc = verdict.as_ref().map_err(|e| TestCaseError::fail(format!(
                    "valid handshake {sent_hs:?} rejected: {e}"
                )))?;
                let mut expect_peer = sent_hs.clone();
                expect_peer.psk_proof = acc.peer.psk_proof.clone();
                prop_assert_eq!(&acc.peer, &expect_peer);
                let routes: Vec<ipnet::IpNet> =
                    sent_hs.routes.iter().map(|r| r.parse().unwrap()).collect();
                prop_assert_eq!(&acc.routes, &routes);
            } else {
                prop_assert!(
                    matches!(verdict, Err(Reject::Malformed(_))),
                    "invalid handshake {:?} got {:?}", sent_hs, verdict
                );
            }
        }
    }

    /// Mismatched PSKs or channel bindings are rejected on both sides.
    #[test]
    fn handshake_mismatch_rejected_both_sides(
        client_hs in valid_handshake(),
        server_hs in valid_handshake(),
        binding_c in binding(),
        binding_s in binding(),
        key_c in psk(),
        key_s in psk(),
        mismatch_key in any::<bool>(),
    ) {
        let (key_s, binding_s) = if mismatch_key {
            (key_s, binding_c)
        } else {
            prop_assume!(binding_c != binding_s);
            (key_c.clone(), binding_s)
        };
        let mut client = Handshaker::new(client_hs.clone(), Side::Client, binding_c, Some(key_c.clone()));
        let mut server = Handshaker::new(server_hs.clone(), Side::Server, binding_s, Some(key_s.clone()));
        let same_proof = Handshaker::new(client_hs, Side::Client, binding_c, Some(key_s)).outgoing()
            == client.outgoing();
        // Psk has no Eq; skip the (vanishingly rare) pair of equal keys.
        prop_assume!(!same_proof);
        let at_server = server.receive(&client.outgoing().encode_to_vec());
        let at_client = client.receive(&server.outgoing().encode_to_vec());
        prop_assert_eq!(at_server, Err(Reject::BadProof));
        prop_assert_eq!(at_client, Err(Reject::BadProof));
    }
}

/// The route-count limit is exact.
#[test]
fn handshake_route_limit_boundary() {
    let key = || Some(Psk::new(Zeroizing::new(vec![b'k'; 32])).unwrap());
    let b = ChannelBinding([3; BINDING_LEN]);
    for (n, ok) in [(MAX_ROUTES, true), (MAX_ROUTES + 1, false)] {
        let hs = Handshake {
            capabilities: Some(Capabilities::default()),
            name: "n".into(),
            version: PROTOCOL_VERSION,
            psk_proof: vec![],
            routes: (0..n)
                .map(|i| format!("fd00:{i:x}::/64"))
                .collect::<Vec<_>>(),
            hint: None,
            software: String::new(),
            addresses: vec![],
        };
        let sender = Handshaker::new(hs, Side::Client, b, key());
        let frame_bytes = sender.outgoing_frame();
        assert!(frame_bytes.len() <= HEADER_LEN + MAX_CONTROL_FRAME);
        let mut receiver = Handshaker::new(
            Handshake {
                name: "r".into(),
                capabilities: Some(Capabilities::default()),
                version: PROTOCOL_VERSION,
                ..Default::default()
            },
            Side::Server,
            b,
            key(),
        );
        let verdict = receiver.receive(&frame_bytes[HEADER_LEN..]);
        assert_eq!(verdict.is_ok(), ok, "{n} routes: {verdict:?}");
        if !ok {
            assert!(matches!(verdict, Err(Reject::Malformed(_))));
        }
    }
}

// ---------------------------------------------------------------------------
// latency
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum LatencyOp {
    /// Send a ping at this time.
    Ping(u64),
    /// Receive a pong for an arbitrary timestamp.
    Pong(u64, u64),
    /// Receive a pong answering the n-th (mod count) ping still outstanding,
    /// `delay` ms after it was sent (or at an arbitrary earlier time).
    Answer(usize, u64, bool),
    /// A duplicate of the last pong seen.
    Replay(u64),
}

fn latency_op() -> impl Strategy<Value = LatencyOp> {
    prop_oneof![
        4 => prop_oneof![0u64..10_000, any::<u64>()].prop_map(LatencyOp::Ping),
        2 => (any::<u64>(), any::<u64>()).prop_map(|(t, n)| LatencyOp::Pong(t, n)),
        4 => (any::<usize>(), prop_oneof![0u64..1000, any::<u64>()], prop::bool::weighted(0.1))
            .prop_map(|(i, d, early)| LatencyOp::Answer(i, d, early)),
        1 => any::<u64>().prop_map(LatencyOp::Replay),
    ]
}

proptest! {
    #![proptest_config(cases(500))]

    /// Any sequence of pings and pongs: no panic, the outstanding count is
    /// bounded by the miss limit and follows the documented rules, and every
    /// RTT is finite and non-negative.
    #[test]
    fn latency_arbitrary_sequences(
        miss_limit in prop_oneof![0usize..=8, any::<u16>().prop_map(usize::from)],
        ops in prop::collection::vec(latency_op(), 0..64),
    ) {
        let limit = miss_limit.max(1);
        let mut l = Latency::new(miss_limit);
        // Model: the timestamps still outstanding, oldest first.
        let mut model: Vec<u64> = Vec::new();
        let mut last_pong: Option<Pong> = None;
        let mut rtts: Vec<f64> = Vec::new();

        for op in ops {
            let (pong, now) = match op {
                LatencyOp::Ping(now) => {
                    let p = l.ping(now);
                    prop_assert_eq!(p.timestamp_ms, now);
                    if model.len() >= limit {
                        model.remove(0);
                    }
                    model.push(now);
                    (None, 0)
                }
                LatencyOp::Pong(ts, now) => (Some(Pong { timestamp_ms: ts }), now),
                LatencyOp::Answer(i, delay, early) => {
                    if model.is_empty() {
                        (None, 0)
                    } else {
                        let ts = model[i % model.len()];
                        let pong = pong_for(&Ping { timestamp_ms: ts });
                        let now = if early { ts.saturating_sub(delay) } else { ts.saturating_add(delay) };
                        (Some(pong), now)
                    }
                }
                LatencyOp::Replay(now) => (last_pong, now),
            };
            if let Some(pong) = pong {
                let expect = model.iter().position(|&t| t == pong.timestamp_ms);
                let got = l.pong(&pong, now);
                match expect {
                    Some(idx) => {
                        model.drain(..=idx);
                        let rtt = got.expect("pong for an outstanding ping ignored");
                        prop_assert_eq!(rtt, now.saturating_sub(pong.timestamp_ms) as f64);
                        rtts.push(rtt);
                    }
                    None => prop_assert_eq!(got, None),
                }
                last_pong = Some(pong);
            }

            prop_assert_eq!(l.missed(), model.len());
            prop_assert!(l.missed() <= limit);
            prop_assert_eq!(l.is_dead(), l.missed() >= limit);
            for v in [l.last_rtt_ms(), l.smoothed_rtt_ms()].into_iter().flatten() {
                prop_assert!(v.is_finite() && v >= 0.0, "bad RTT {}", v);
            }
            prop_assert_eq!(l.last_rtt_ms(), rtts.last().copied());
            if let Some(s) = l.smoothed_rtt_ms() {
                // A moving average stays within the range of its samples.
                let lo = rtts.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = rtts.iter().copied().fold(0.0, f64::max);
                let slack = 1e-9 * hi.max(1.0);
                prop_assert!(s >= lo - slack && s <= hi + slack, "smoothed {} outside [{}, {}]", s, lo, hi);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// config
// ---------------------------------------------------------------------------

const SECTIONS: &[&str] = &[
    "[node]",
    "[netd]",
    "[privd]",
    "[privd.tun]",
    "[privd.nat]",
    "[[netd.listen]]",
    "[[netd.connect]]",
    "[node.hint]",
    "[netd.exit]",
    "[bogus]",
];

const KEYS: &[&str] = &[
    "name",
    "role",
    "psk_file",
    "psk_env",
    "user",
    "group",
    "state_dir",
    "cert_file",
    "key_file",
    "management_socket",
    "privd_socket",
    "ping_interval_ms",
    "ping_miss_limit",
    "reconnect_min_ms",
    "reconnect_max_ms",
    "handshake_timeout_ms",
    "peer_queue",
    "announce_routes",
    "transport",
    "address",
    "server_name",
    "fingerprint",
    "ca_file",
    "ws_path",
    "socket",
    "socket_group",
    "netd_user",
    "netd_uid",
    "addresses",
    "mtu",
    "routes",
    "allowed_routes",
    "enable",
    "sources",
    "zero_config",
    "insecure_open",
    "level",
    "operator_group",
    "max_tcp_flows",
    "flow_buffer_bytes",
    "allow",
    "deny",
    "bogus",
];

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(50),
            Just(576),
            Just(1280),
            Just(65535),
            Just(65536)
        ]
        .prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("\"entry\"".to_string()),
        Just("\"quic\"".to_string()),
        Just("\"ws\"".to_string()),
        Just("\"/sapper\"".to_string()),
        Just("\"10.0.0.2:4433\"".to_string()),
        Just(format!("\"{}\"", "ab".repeat(32))),
        "[a-zA-Z0-9 ./:_-]{0,20}".prop_map(|s| format!("{s:?}")),
        prop::collection::vec(cidr(), 0..3).prop_map(|v| format!("{v:?}")),
        prop::collection::vec(route(), 0..3).prop_map(|v| format!("{v:?}")),
        any::<String>(),
    ]
}

fn toml_like() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        1 => prop::sample::select(SECTIONS).prop_map(str::to_string),
        4 => (prop::sample::select(KEYS), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "\\PC{0,20}",
    ];
    prop::collection::vec(line, 0..24).prop_map(|lines| lines.join("\n"))
}

/// A TOML basic string holding `s`.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// `key = value` with probability `p`, else nothing.
fn maybe_kv(
    p: f64,
    key: &'static str,
    value: impl Strategy<Value = String>,
) -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(p, value.prop_map(move |v| format!("{key} = {v}")))
}

fn str_from(choices: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(choices).prop_map(toml_str)
}

/// Mostly one of the `good` strings, sometimes one of the `bad` ones.
fn str_good_bad(
    good: &'static [&'static str],
    bad: &'static [&'static str],
) -> impl Strategy<Value = String> {
    prop_oneof![8 => str_from(good), 1 => str_from(bad)]
}

fn int_from(choices: &'static [i64]) -> impl Strategy<Value = String> {
    prop_oneof![
        9 => prop::sample::select(choices).prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
    ]
}

fn prefixes() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![9 => cidr(), 1 => route()], 0..4).prop_map(|v| toml_array(&v))
}

fn lines(parts: Vec<Option<String>>) -> String {
    parts.into_iter().flatten().collect::<Vec<_>>().join("\n")
}

fn bool_kv(p: f64, key: &'static str) -> impl Strategy<Value = Option<String>> {
    maybe_kv(p, key, any::<bool>().prop_map(|b| b.to_string()))
}

/// Credential-style paths (`%d/NAME`), good and hostile, and plain ones.
fn secret_path() -> impl Strategy<Value = String> {
    str_good_bad(
        &["/etc/sapper/psk", "%d/psk", "%d/sapper.psk"],
        &[
            "%d/",
            "%d/.",
            "%d/..",
            "%d/../etc/shadow",
            "%d/a/b",
            "%d//x",
            "%d",
        ],
    )
}

// The section strategies below are boxed: unboxed, their nested value trees
// live on the stack and overflow a test thread's 2 MiB in debug builds.

fn node_section() -> BoxedStrategy<String> {
    let hint = (
        maybe_kv(
            0.9,
            "level",
            str_good_bad(&["prefer", "exclude", "fixed"], &["Prefer", "unspecified"]),
        ),
        maybe_kv(
            0.9,
            "role",
            str_good_bad(&["entry", "exit", "relay"], &["indeterminate"]),
        ),
        prop::option::weighted(0.05, Just("bogus = 1".to_string())),
    )
        .prop_map(|(a, b, c)| format!("[node.hint]\n{}", lines(vec![a, b, c])));
    (
        (
            maybe_kv(
                0.8,
                "name",
                prop_oneof![8 => "[a-zA-Z0-9._-]{1,64}", 1 => node_name()]
                    .prop_map(|n| toml_str(&n)),
            ),
            maybe_kv(
                0.5,
                "role",
                str_good_bad(&["entry", "exit", "relay"], &["Entry", "bogus"]),
            ),
            maybe_kv(0.5, "psk_file", secret_path()),
            maybe_kv(0.2, "psk_env", Just(toml_str("SAPPER_PSK"))),
        ),
        (
            bool_kv(0.2, "zero_config"),
            bool_kv(0.1, "auto_negotiate"),
            bool_kv(0.1, "auto_routes"),
            bool_kv(0.2, "insecure_open"),
            bool_kv(0.1, "no_announce_routes"),
            bool_kv(0.1, "no_accept_routes"),
        ),
        prop::option::weighted(0.2, hint),
    )
        .prop_map(|((a, b, c, d), (e, f, g, h, i, j), hint)| {
            let mut out = format!("[node]\n{}", lines(vec![a, b, c, d, e, f, g, h, i, j]));
            if let Some(hint) = hint {
                out.push('\n');
                out.push_str(&hint);
            }
            out
        })
        .boxed()
}

/// Egress rules: `[PROTO] PREFIX [port N[-M]]`, well- and ill-formed.
fn egress_rule() -> BoxedStrategy<String> {
    (
        prop::sample::select(&["", "tcp ", "udp ", "icmp ", "sctp ", "TCP "][..]),
        prop_oneof![4 => cidr(), 1 => route()],
        prop::sample::select(
            &[
                "",
                "",
                " port 22",
                " port 0",
                " port 65535",
                " port 1-65535",
                " port 5000-5999",
                " port 9-3",
                " port 70000",
                " port x",
                " port",
                " 22",
            ][..],
        ),
    )
        .prop_map(|(proto, prefix, port)| format!("{proto}{prefix}{port}"))
        .boxed()
}

fn exit_section() -> BoxedStrategy<String> {
    (
        (
            bool_kv(0.5, "enable"),
            maybe_kv(
                0.2,
                "max_tcp_flows",
                int_from(&[0, 1, 1024, 1_000_000, 1_000_001]),
            ),
            maybe_kv(
                0.2,
                "max_udp_flows",
                int_from(&[0, 1, 1_000_000, 1_000_001]),
            ),
            maybe_kv(0.2, "max_icmp_flows", int_from(&[0, 1, 100_000, 100_001])),
            maybe_kv(
                0.2,
                "flow_buffer_bytes",
                int_from(&[4095, 4096, 131_072, 67_108_864, 67_108_865]),
            ),
            maybe_kv(
                0.2,
                "max_buffer_bytes",
                int_from(&[0, 16_383, 16_384, 524_288, 268_435_456]),
            ),
        ),
        (
            maybe_kv(
                0.2,
                "connect_timeout_ms",
                int_from(&[99, 100, 600_000, 600_001]),
            ),
            maybe_kv(
                0.2,
                "udp_idle_timeout_ms",
                int_from(&[999, 1000, 86_400_000, 86_400_001]),
            ),
            maybe_kv(
                0.2,
                "icmp_idle_timeout_ms",
                int_from(&[999, 1000, 3_600_000, 3_600_001]),
            ),
            bool_kv(0.3, "deny_local"),
            maybe_kv(
                0.5,
                "allow",
                prop::collection::vec(egress_rule(), 0..4).prop_map(|v| toml_array(&v)),
            ),
            maybe_kv(
                0.5,
                "deny",
                prop::collection::vec(egress_rule(), 0..4).prop_map(|v| toml_array(&v)),
            ),
        ),
    )
        .prop_map(|((a, b, c, d, e, f), (g, h, i, j, k, l))| {
            format!(
                "[netd.exit]\n{}",
                lines(vec![a, b, c, d, e, f, g, h, i, j, k, l])
            )
        })
        .boxed()
}

fn listen_table() -> BoxedStrategy<String> {
    (
        maybe_kv(0.95, "transport", str_good_bad(&["quic", "ws"], &["tcp"])),
        maybe_kv(
            0.95,
            "address",
            str_good_bad(
                &["0.0.0.0:4433", "[::]:443"],
                &["localhost:1", "1.2.3.4", ""],
            ),
        ),
        maybe_kv(
            0.3,
            "ws_path",
            str_good_bad(&["/sapper", "/"], &["sapper", ""]),
        ),
    )
        .prop_map(|(a, b, c)| format!("[[netd.listen]]\n{}", lines(vec![a, b, c])))
        .boxed()
}

fn connect_table() -> BoxedStrategy<String> {
    let fingerprint = prop_oneof![
        4 => any::<[u8; 32]>().prop_map(|b| toml_str(&hex_upper(&b, ":"))),
        4 => any::<[u8; 32]>().prop_map(|b| toml_str(&hex_upper(&b, ""))),
        1 => any::<[u8; 31]>().prop_map(|b| toml_str(&hex_upper(&b, ":"))),
        1 => str_from(&["", "zz", "::", "ab:cd"]),
    ];
    (
        maybe_kv(0.95, "transport", str_good_bad(&["quic", "ws"], &["QUIC"])),
        maybe_kv(
            0.95,
            "address",
            str_good_bad(
                &["10.0.0.2:4433", "exit.example:443", "[fd00::2]:4433"],
                &["nocolon", ""],
            ),
        ),
        maybe_kv(0.2, "server_name", str_from(&["exit.example", ""])),
        maybe_kv(0.85, "fingerprint", fingerprint),
        maybe_kv(0.2, "ca_file", Just(toml_str("/etc/sapper/ca.pem"))),
        maybe_kv(0.3, "ws_path", str_good_bad(&["/sapper"], &["sapper"])),
    )
        .prop_map(|(a, b, c, d, e, f)| {
            format!("[[netd.connect]]\n{}", lines(vec![a, b, c, d, e, f]))
        })
        .boxed()
}

fn hex_upper(bytes: &[u8], sep: &str) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(sep)
}

fn netd_section() -> BoxedStrategy<String> {
    (
        (
            maybe_kv(0.5, "user", Just(toml_str("sapper"))),
            maybe_kv(0.2, "cert_file", secret_path()),
            maybe_kv(0.2, "key_file", secret_path()),
            maybe_kv(
                0.3,
                "privd_socket",
                Just(toml_str("/run/sapper/privd.sock")),
            ),
            maybe_kv(0.3, "ping_interval_ms", int_from(&[0, 49, 50, 1000])),
            maybe_kv(0.3, "ping_miss_limit", int_from(&[0, 1, 5, -1])),
        ),
        (
            maybe_kv(0.3, "reconnect_min_ms", int_from(&[0, 1, 250, 40_000])),
            maybe_kv(0.3, "reconnect_max_ms", int_from(&[0, 1, 30_000])),
            maybe_kv(0.2, "handshake_timeout_ms", int_from(&[0, 10_000])),
            maybe_kv(0.3, "peer_queue", int_from(&[0, 1, 1024, 65536, 65537])),
            maybe_kv(0.5, "announce_routes", prefixes()),
            maybe_kv(0.1, "operator_group", Just(toml_str("sapper-ops"))),
        ),
        prop::collection::vec(listen_table(), 0..3),
        prop::collection::vec(connect_table(), 0..3),
        prop::option::weighted(0.4, exit_section()),
    )
        .prop_map(
            |((a, b, c, d, e, f), (g, h, i, j, k, l), listen, connect, exit)| {
                let mut out = format!(
                    "[netd]\n{}",
                    lines(vec![a, b, c, d, e, f, g, h, i, j, k, l])
                );
                for t in listen.iter().chain(&connect).chain(&exit) {
                    out.push('\n');
                    out.push_str(t);
                }
                out
            },
        )
        .boxed()
}

fn privd_section() -> BoxedStrategy<String> {
    let tun = (
        maybe_kv(
            0.7,
            "name",
            prop_oneof![
                str_good_bad(
                    &["sapper0", "abcdefghijklmno"],
                    &["", "a/b", "abcdefghijklmnop"]
                ),
                "[a-z0-9]{1,20}".prop_map(|n| toml_str(&n)),
            ],
        ),
        maybe_kv(
            0.6,
            "mtu",
            int_from(&[0, 575, 576, 1279, 1280, 1500, 65535, 65536]),
        ),
        maybe_kv(0.7, "addresses", prefixes()),
        maybe_kv(0.4, "routes", prefixes()),
        maybe_kv(0.4, "allowed_routes", prefixes()),
    )
        .prop_map(|(a, b, c, d, e)| format!("[privd.tun]\n{}", lines(vec![a, b, c, d, e])));
    let nat = (
        maybe_kv(0.8, "enable", any::<bool>().prop_map(|b| b.to_string())),
        maybe_kv(0.5, "sources", prefixes()),
    )
        .prop_map(|(a, b)| format!("[privd.nat]\n{}", lines(vec![a, b])));
    (
        maybe_kv(0.6, "netd_user", Just(toml_str("sapper"))),
        maybe_kv(0.3, "netd_uid", int_from(&[0, 998, -1, 1 << 33])),
        maybe_kv(0.2, "socket_group", Just(toml_str("sapper"))),
        prop::option::weighted(0.9, tun),
        prop::option::weighted(0.3, nat),
    )
        .prop_map(|(a, b, c, tun, nat)| {
            let mut out = format!("[privd]\n{}", lines(vec![a, b, c]));
            for t in [tun, nat].into_iter().flatten() {
                out.push('\n');
                out.push_str(&t);
            }
            out
        })
        .boxed()
}

/// Config files shaped like real ones: the right keys in the right sections,
/// with values on and around each validation boundary, and now and then a
/// stray line.
fn config_file() -> BoxedStrategy<String> {
    (
        prop::option::weighted(0.8, node_section()),
        prop::option::weighted(0.7, netd_section()),
        prop::option::weighted(0.6, privd_section()),
        prop::option::weighted(0.05, (any::<usize>(), toml_like())),
    )
        .prop_map(|(node, netd, privd, stray)| {
            let mut out: Vec<String> = [node, netd, privd]
                .into_iter()
                .flatten()
                .flat_map(|s| s.lines().map(str::to_string).collect::<Vec<_>>())
                .collect();
            if let Some((at, text)) = stray {
                out.insert(at % (out.len() + 1), text);
            }
            out.join("\n")
        })
        .boxed()
}

fn check_config(text: &str) -> Result<(), TestCaseError> {
    match Config::parse(text, "fuzz.toml") {
        Err(e) => {
            prop_assert_eq!(&e.file, "fuzz.toml");
            prop_assert!(!e.key.is_empty());
            prop_assert!(!e.to_string().is_empty());
        }
        Ok(c) => {
            // Whatever parses is typed: the values are what the types allow.
            if let Some(name) = &c.node.name {
                prop_assert!(!name.as_str().is_empty() && name.as_str().len() <= MAX_NAME_LEN);
            }
            if let Some(n) = &c.netd {
                prop_assert!(n.ping_interval.get() >= 50);
                prop_assert!(n.ping_miss_limit.get() >= 1);
                let r = n.reconnect;
                prop_assert!(0 < r.min_ms() && r.min_ms() <= r.max_ms());
                prop_assert!((1..=65536).contains(&n.peer_queue.get()));
                prop_assert!((100..=60_000).contains(&n.handshake_timeout.get()));
                for l in &n.listen {
                    prop_assert!(l.ws_path.as_str().starts_with('/'));
                    let _ = l.transport.as_str();
                }
                for c in &n.connect {
                    prop_assert!(c.ws_path().as_str().starts_with('/'));
                    prop_assert!(!c.server_name().is_empty());
                    prop_assert!(matches!(c.transport(), Transport::Quic | Transport::Ws));
                }
                let b = n.exit.buffers;
                prop_assert!(b.total_bytes() >= 2 * u64::from(b.flow_bytes()) + 131_072);
            }
            if let Some(p) = &c.privd {
                prop_assert!(!p.tun.name.is_empty() && p.tun.name.len() <= 15);
                prop_assert!((576..=65535).contains(&p.tun.mtu));
                prop_assert!(p.netd_user.is_some() != p.netd_uid.is_some());
            }
            check_credentials(text, c)?;
        }
    }
    Ok(())
}

/// `%d/NAME` paths expand to a file directly inside the credentials
/// directory, or are refused; never a path outside it.
fn check_credentials(text: &str, mut c: Config) -> Result<(), TestCaseError> {
    let paths = |c: &Config| {
        let id = c.netd.as_ref().and_then(|n| n.identity.as_ref());
        [
            ("node.psk_file", c.node.psk_file().map(Path::to_path_buf)),
            ("netd.cert_file", id.map(|i| i.cert.clone())),
            ("netd.key_file", id.map(|i| i.key.clone())),
        ]
    };
    let before = paths(&c);
    let uses_creds = |p: &Option<PathBuf>| {
        p.as_ref()
            .and_then(|p| p.to_str())
            .is_some_and(|s| s.starts_with("%d/"))
    };

    let dir = Path::new("/run/credentials/sapper-netd.service");
    match c.expand_credentials("fuzz.toml", Some(dir)) {
        Ok(()) => {
            for ((key, old), (_, new)) in before.iter().zip(paths(&c)) {
                if uses_creds(old) {
                    let new = new.expect("expanded path vanished");
                    prop_assert_eq!(new.parent(), Some(dir), "{} = {:?}", key, new);
                    let name = new.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    prop_assert!(!name.is_empty() && !name.contains('/'));
                    prop_assert!(name != "." && name != "..");
                } else {
                    prop_assert_eq!(old, &new, "{} changed", key);
                }
            }
        }
        Err(e) => {
            prop_assert!(
                before.iter().any(|(k, p)| *k == e.key && uses_creds(p)),
                "unexpected error {}",
                e
            );
        }
    }

    // Without a credentials directory, every `%d/` path is an error.
    let mut c = Config::parse(text, "fuzz.toml").expect("parsed once, parses again");
    let r = c.expand_credentials("fuzz.toml", None);
    prop_assert_eq!(r.is_err(), before.iter().any(|(_, p)| uses_creds(p)));
    Ok(())
}

proptest! {
    #![proptest_config(cases(1000))]

    /// Arbitrary text never panics the config parser.
    #[test]
    fn config_parse_arbitrary_text(text in any::<String>()) {
        check_config(&text)?;
    }

    /// Config files shaped like real ones reach the validator; whatever it
    /// accepts satisfies the documented limits.
    #[test]
    fn config_parse_structured(text in config_file()) {
        check_config(&text)?;
    }
}

proptest! {
    #![proptest_config(cases(400))]

    /// The real keys shuffled among the real sections, with values of any
    /// type: exercises unknown-field and type errors.
    #[test]
    fn config_parse_toml_like(text in toml_like()) {
        check_config(&text)?;
    }
}
