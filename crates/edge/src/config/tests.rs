use super::*;

#[test]
fn durations_and_sizes_parse_like_nginx() {
    assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
    assert!(parse_duration("3x").is_err());
    assert_eq!(parse_size("10M").unwrap(), 10 * 1024 * 1024);
    assert_eq!(parse_size("16k").unwrap(), 16 * 1024);
    assert!(parse_size("ten").is_err());
}

/// Found writing the property tests (config/props.rs): a duration or
/// size whose unit overflows u64 panicked (debug builds) or wrapped to a
/// small value (release builds) instead of being an error.
#[test]
fn overflowing_durations_and_sizes_are_errors() {
    assert!(parse_duration("213503982334602d").is_err());
    assert!(parse_duration("18446744073709551615m").is_err());
    assert!(parse_size("18014398509481984k").is_err());
    assert!(parse_size("17179869184G").is_err());
    assert_eq!(
        parse_duration("18446744073709551615s").unwrap(),
        Duration::from_secs(u64::MAX)
    );
    assert_eq!(parse_size("17179869183G").unwrap(), 17_179_869_183 << 30);
}

/// docs/configuration.md documents every variable `edge` reads through
/// wharf-config.
#[test]
fn every_environment_variable_is_documented() {
    let doc = include_str!("../../../../docs/configuration.md");
    for var in env_vars() {
        assert!(
            doc.contains(&format!("| `{}` |", var.name())),
            "{} is missing from docs/configuration.md",
            var.name()
        );
    }
}

#[test]
fn a_bad_tracing_variable_is_named() {
    let env = wharf_config::EnvMap::from_pairs([
        ("WHARF_TRACING", "otlp"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
    ]);
    let err = load_env(&env).unwrap_err();
    assert!(err.to_string().contains("OTEL_TRACES_SAMPLER_ARG"), "{err}");
}

/// The overrides come from the map given, not the process: a blank value
/// is unset, `off` turns the admin listener off, a Redis URL turns
/// `[redis]` on.
#[test]
fn overrides_read_the_environment_they_are_given() {
    let env = wharf_config::EnvMap::from_pairs([
        ("WHARF_EDGE_HTTPS", "127.0.0.1:9443"),
        ("WHARF_EDGE_HTTP", "  "),
        ("WHARF_EDGE_ADMIN", "off"),
        ("WHARF_EDGE_UPSTREAM", "127.0.0.1:1, 127.0.0.1:2"),
        ("WHARF_EDGE_REDIS_URL", "redis://127.0.0.1:6390"),
    ]);
    let overrides = Overrides::from_env(&env);
    assert_eq!(overrides.http, None);
    let mut config = development();
    overrides.apply(&mut config);
    let https = config.listen.iter().find(|l| l.ssl).unwrap();
    assert_eq!(https.address.get_ref(), "127.0.0.1:9443");
    assert!(config
        .listen
        .iter()
        .all(|l| !l.redirect_to_https || l.https_port == 9443));
    assert!(!config.admin.enabled);
    let servers: Vec<&str> = config.upstreams[0]
        .servers
        .iter()
        .map(|s| s.address.get_ref().as_str())
        .collect();
    assert_eq!(servers, ["127.0.0.1:1", "127.0.0.1:2"]);
    let redis = config.redis.unwrap();
    assert_eq!(redis.url.unwrap().get_ref(), "redis://127.0.0.1:6390");
}

#[test]
fn a_typo_is_an_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    std::fs::write(
        &path,
        "[http]\nclient_max_body_size = \"10M\"\nclient_max_body_sise = \"1M\"\n",
    )
    .unwrap();
    let err = load(Some(&path)).unwrap_err();
    assert_eq!(err.line, Some(3), "{err}");
    assert!(err.message.contains("client_max_body_sise"), "{err}");
}
