//! The test-network support itself: namespaces on a bridge reach each other, and vanish on drop.

use fleetboard_tests::netns::{Netns, Underlay, require_net_admin};

#[test]
fn hosts_on_the_underlay_reach_each_other_and_are_cleaned_up() {
    require_net_admin();
    let name;
    {
        let net = Underlay::new().unwrap();
        let a = Netns::new("a").unwrap();
        let b = Netns::new("b").unwrap();
        net.attach(&a, "eth0", &["198.18.0.1/24"]).unwrap();
        net.attach(&b, "eth0", &["198.18.0.2/24"]).unwrap();
        let out = a
            .exec("ping", &["-c", "1", "-W", "5", "198.18.0.2"])
            .unwrap();
        assert!(out.contains("1 received"), "ping output: {out}");
        name = a.name().to_string();
    }
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&name),
        "namespace {name} was not deleted"
    );
}
