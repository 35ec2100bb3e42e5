use super::*;

fn runtime(text: &str) -> Runtime {
    let (config, source) = crate::config::parse(None, text.to_owned()).unwrap();
    build(&config, &source, 1).unwrap().runtime
}

#[test]
fn hosts_match_names_without_case_or_port_and_wildcards_a_whole_label() {
    let server = |names: &str, default: bool| {
        format!(
            "[[server]]\nserver_name = [{names}]\ndefault_server = {default}\n\
             [[server.location]]\npath = \"/\"\nreturn = {{ status = 200 }}\n"
        )
    };
    let runtime = runtime(&format!(
        "[[listen]]\naddress = \"127.0.0.1:0\"\n{}{}{}",
        server("\"default.test\"", true),
        server("\"Exact.Example.com\"", false),
        server("\"*.example.org\"", false),
    ));
    let names = |host| runtime.vhosts[runtime.vhost_index(host)].names[0].as_str();
    assert_eq!(names(Some("exact.example.com")), "exact.example.com");
    assert_eq!(names(Some("EXACT.example.COM:8443")), "exact.example.com");
    assert_eq!(names(Some("a.Example.ORG")), "*.example.org");
    assert_eq!(names(Some("b.a.example.org:80")), "*.example.org");
    // A wildcard needs a whole label in front of its suffix.
    assert_eq!(names(Some("example.org")), "default.test");
    assert_eq!(names(Some("badexample.org")), "default.test");
    assert_eq!(names(Some("é.example.org")), "*.example.org");
    assert_eq!(names(Some("é")), "default.test");
    assert_eq!(names(None), "default.test");
}

/// `[[listen]] backlog` (nginx `listen … backlog=N`): 1024 unless set;
/// 0 or past 65535 is an error on its line.
#[test]
fn a_listener_backlog_is_1024_unless_set_and_out_of_range_is_named() {
    let built = |listen: &str| {
        let text = format!(
            "[[listen]]\naddress = \"127.0.0.1:0\"\n{listen}\n\
             [[server]]\nserver_name = [\"a\"]\ndefault_server = true\n\
             [[server.location]]\npath = \"/\"\nreturn = {{ status = 200 }}\n"
        );
        let (config, source) = crate::config::parse(None, text)?;
        build(&config, &source, 1)
    };
    let backlog = |listen: &str| built(listen).map(|b| b.listeners[0].backlog);
    assert_eq!(backlog("").unwrap(), 1024);
    assert_eq!(backlog("backlog = 4").unwrap(), 4);
    assert_eq!(backlog("backlog = 65535").unwrap(), 65_535);
    for bad in ["backlog = 0", "backlog = 65536"] {
        let error = backlog(bad).unwrap_err();
        assert_eq!(error.line, Some(3), "{bad}: {error}");
        assert!(error.message.contains("expected 1 to 65535"), "{error}");
    }
    assert_eq!(backlog("backlog = -1").unwrap_err().line, Some(3));
}
