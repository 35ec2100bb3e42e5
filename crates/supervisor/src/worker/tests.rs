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
