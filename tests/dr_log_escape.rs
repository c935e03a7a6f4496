//! Log injection: text that came from a DNS record reaches the log escaped,
//! never raw. Alone in its test binary: it captures logs with a
//! thread-local subscriber, which other tests' threads in the same process
//! could race (tracing caches each call site's interest process-wide).

mod common;

use std::time::Duration;

use common::{Answer, DnsServer, Logs, Watcher, TRIGGER};
use lifeboat::dr::DrMode;
use lifeboat::trust::Role;

const ON: &str = "v=1; b=on; k=zpa";

#[tokio::test(flavor = "current_thread")]
async fn a_forged_newline_in_a_record_adds_no_log_line() {
    // The TXT record is built here, not read from zone-file text:
    // hickory's zone parser misreads `\DDD` escapes (`\010` becomes U+0100).
    fn publish_raw(dns: &DnsServer, text: &str) {
        use hickory_server::proto::rr::rdata::TXT;
        use hickory_server::proto::rr::{Name, RData, Record};
        let name = Name::from_ascii(format!("{TRIGGER}.")).expect("name");
        let txt = RData::TXT(TXT::new(vec![text.to_string()]));
        dns.set(Answer::Zone(vec![Record::from_rdata(name, 1, txt)]));
    }
    let (logs, _guard) = Logs::capture();
    let dns = DnsServer::start().await;
    // Accepted (unknown words are ignored), so its text is logged.
    publish_raw(&dns, &format!("{ON}; note=x\nFORGED edge stopped"));
    let w = Watcher::start(&dns, Role::Edge, "");
    w.wait_mode(DrMode::On, Duration::from_secs(5)).await;
    // Malformed, with a terminal escape in the refused value: its reason is logged.
    let before = w.lookups("malformed");
    publish_raw(&dns, "v=1; b=o\u{1b}[2Kn; k=zpa");
    w.wait_lookups("malformed", before, 1).await;

    let text = logs.text();
    assert!(
        text.lines().all(|l| !l.starts_with("FORGED")),
        "a forged line:\n{text}"
    );
    assert_eq!(logs.count("FORGED"), 1, "{text}");
    assert!(text.contains(r"note=x\nFORGED edge stopped"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "a raw escape reached the log:\n{text}"
    );
    assert!(text.contains(r"o\u{1b}[2Kn"), "{text}");
}
