use super::Report;

#[test]
fn reports_round_trip() {
    for report in [
        Report::Ready,
        Report::Heartbeat {
            requests: 12,
            in_flight: 3,
        },
    ] {
        assert_eq!(Report::decode(report.encode().trim()), Some(report));
    }
    assert_eq!(Report::decode("nonsense"), None);
    assert_eq!(Report::decode("hb x 1"), None);
}

#[test]
fn listen_addresses_round_trip() {
    let addrs: Vec<std::net::SocketAddr> = vec![
        "127.0.0.1:8080".parse().unwrap(),
        "[::]:443".parse().unwrap(),
        "0.0.0.0:0".parse().unwrap(),
    ];
    let text = super::encode_addrs(&addrs);
    assert_eq!(super::decode_addrs(&text), Some(addrs));
    assert_eq!(super::decode_addrs(""), Some(Vec::new()));
    assert_eq!(super::decode_addrs("127.0.0.1:1,nonsense"), None);
}
