use super::*;

fn built(extra: &str) -> Result<Built, ConfigError> {
    let text = format!(
        "[[listen]]\naddress = \"127.0.0.1:0\"\n\
         [[server]]\nserver_name = [\"a\"]\ndefault_server = true\n\
         [[server.location]]\npath = \"/\"\nreturn = {{ status = 200 }}\n\
         [[limit_req]]\nzone = \"api\"\nrate = \"1r/s\"\n{extra}"
    );
    let (config, source) = crate::config::parse(None, text).unwrap();
    build(&config, &source, 1)
}

/// `[redis]` is checked where it is loaded, and a checked configuration
/// never connects (no runtime here: connecting would panic).
#[test]
fn redis_mistakes_are_named_and_a_good_url_is_not_dialled() {
    let error = built("[redis]\ntimeout = \"50ms\"\n").err().unwrap();
    assert!(error.message.contains("redis: url is not set"), "{error}");
    let error = built("[redis]\nurl = \"redis://a\"\nkey_prefix = \"x{y}\"\n")
        .err()
        .unwrap();
    assert!(error.message.starts_with("redis: key_prefix:"), "{error}");
    assert!(error.message.contains("must not contain"), "{error}");
    let error = built("[redis]\nurl = \"redis://a:port\"\n").err().unwrap();
    assert!(error.message.starts_with("redis: url:"), "{error}");
    assert_eq!(error.line, Some(13), "{error}");
    let ok = built("[redis]\nurl = \"redis://127.0.0.1:1\"\n").unwrap();
    let limiter = ok.runtime.limit_req.unwrap();
    assert_eq!(limiter.limiter().metrics().store("api"), Some("redis"));
}
