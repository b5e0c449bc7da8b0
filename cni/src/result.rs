//! Plugin results: the spec's result types of 0.1.0/0.2.0 (`ip4`/`ip6`) and 0.3.0 to 1.1.0
//! (`interfaces`/`ips`), normalised into one [`CniResult`]. The raw JSON is kept too, because
//! it is what the next plugin gets as `prevResult`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The parts of a result crid uses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The netns path for interfaces inside the sandbox; empty for host-side ones.
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: String,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl CniResult {
    /// Parses a plugin's ADD output. `Err` carries a reason for [`crate::CniError::BadResult`].
    pub fn parse(value: &Value) -> Result<CniResult, String> {
        let obj = value.as_object().ok_or("not a JSON object")?;
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.1.0")
            .to_owned();
        let mut result = CniResult {
            cni_version,
            ..CniResult::default()
        };
        if let Some(dns) = obj.get("dns") {
            result.dns = parse_dns(dns);
        }
        if obj.contains_key("ip4") || obj.contains_key("ip6") {
            // 0.1.0 / 0.2.0: one address per family, no interfaces.
            for key in ["ip4", "ip6"] {
                let Some(ip) = obj.get(key) else { continue };
                let cidr = ip
                    .get("ip")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{key} without \"ip\""))?;
                let (address, prefix_len) = parse_cidr(cidr)?;
                let gateway = optional_ip(ip.get("gateway"))?;
                result.ips.push(IpConfig {
                    address,
                    prefix_len,
                    gateway,
                    interface: None,
                });
            }
            return Ok(result);
        }
        if let Some(list) = obj.get("interfaces") {
            let list = list.as_array().ok_or("\"interfaces\" is not a list")?;
            for i in list {
                let field = |k: &str| {
                    i.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                result.interfaces.push(Interface {
                    name: field("name"),
                    mac: field("mac"),
                    sandbox: field("sandbox"),
                });
            }
        }
        if let Some(list) = obj.get("ips") {
            let list = list.as_array().ok_or("\"ips\" is not a list")?;
            for ip in list {
                let cidr = ip
                    .get("address")
                    .and_then(Value::as_str)
                    .ok_or("an ips entry without \"address\"")?;
                let (address, prefix_len) = parse_cidr(cidr)?;
                let gateway = optional_ip(ip.get("gateway"))?;
                let interface = match ip.get("interface") {
                    None | Some(Value::Null) => None,
                    Some(v) => {
                        let idx = v.as_u64().ok_or("\"interface\" is not an index")?;
                        let idx = usize::try_from(idx).map_err(|_| "interface index too large")?;
                        if idx >= result.interfaces.len() {
                            return Err(format!("interface index {idx} out of range"));
                        }
                        Some(idx)
                    }
                };
                result.ips.push(IpConfig {
                    address,
                    prefix_len,
                    gateway,
                    interface,
                });
            }
        }
        Ok(result)
    }

    /// The name of the pod's interface as the plugins made it: the interface inside the sandbox
    /// (one with a `sandbox` path) that carries an address, else the first inside the sandbox;
    /// `None` when the result names none (0.1.0/0.2.0 results, or only host-side interfaces),
    /// and the caller keeps the `CNI_IFNAME` it passed. A name that is not a plain Linux
    /// interface name (at most 15 of `A-Za-z0-9-_.`, not `.` or `..`) is not taken: it reaches
    /// netlink and nftables commands.
    pub fn sandbox_interface(&self) -> Option<&str> {
        let inside = |i: &&Interface| !i.sandbox.is_empty() && plain_ifname(&i.name);
        self.ips
            .iter()
            .filter_map(|ip| self.interfaces.get(ip.interface?))
            .find(inside)
            .or_else(|| self.interfaces.iter().find(inside))
            .map(|i| i.name.as_str())
    }

    /// Addresses of the pod, IPv4 first, those on sandbox interfaces (or of unknown interface)
    /// only — host-side veth addresses are not the pod's.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .ips
            .iter()
            .filter(
                |ip| match ip.interface.and_then(|i| self.interfaces.get(i)) {
                    Some(iface) => !iface.sandbox.is_empty(),
                    None => true,
                },
            )
            .map(|ip| ip.address)
            .collect();
        ips.sort_by_key(|ip| ip.is_ipv6());
        ips.dedup();
        ips
    }
}

fn parse_dns(v: &Value) -> Dns {
    let list = |k: &str| -> Vec<String> {
        v.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    Dns {
        nameservers: list("nameservers"),
        domain: v
            .get("domain")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        search: list("search"),
        options: list("options"),
    }
}

fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not in CIDR form"))?;
    let address: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let prefix_len: u8 = prefix
        .parse()
        .map_err(|_| format!("{prefix:?} is not a prefix length"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(format!("prefix length {prefix_len} too large"));
    }
    Ok((address, prefix_len))
}

fn plain_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn optional_ip(v: Option<&Value>) -> Result<Option<IpAddr>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("{s:?} is not an IP address")),
        Some(_) => Err("gateway is not a string".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_1_0_0() {
        let v: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0",
            "interfaces":[{"name":"cni0","mac":"aa:bb"},{"name":"veth1","mac":"cc"},
                          {"name":"eth0","mac":"dd","sandbox":"/run/netns/x"}],
            "ips":[{"address":"10.22.0.5/16","gateway":"10.22.0.1","interface":2},
                   {"address":"fd00::5/64","interface":2},
                   {"address":"10.22.0.1/16","interface":0}],
            "routes":[{"dst":"0.0.0.0/0"}],
            "dns":{"nameservers":["10.0.0.10"],"search":["svc"]}}"#,
        )
        .unwrap();
        let r = CniResult::parse(&v).unwrap();
        assert_eq!(r.cni_version, "1.0.0");
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.ips[0].prefix_len, 16);
        assert_eq!(r.ips[0].gateway, Some("10.22.0.1".parse().unwrap()));
        let ips: Vec<String> = r.pod_ips().iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["10.22.0.5", "fd00::5"]);
        assert_eq!(r.dns.nameservers, ["10.0.0.10"]);
    }

    #[test]
    fn sandbox_interface_from_the_result() {
        let parse = |s: &str| CniResult::parse(&serde_json::from_str(s).unwrap()).unwrap();
        // The sandbox interface that carries the address, not the bridge or the veth.
        let r = parse(
            r#"{"cniVersion":"1.0.0",
            "interfaces":[{"name":"cni0"},{"name":"veth1"},{"name":"net0","sandbox":"/x"},
                          {"name":"net1","sandbox":"/x"}],
            "ips":[{"address":"10.22.0.1/16","interface":0},
                   {"address":"10.22.0.5/16","interface":3}]}"#,
        );
        assert_eq!(r.sandbox_interface(), Some("net1"));
        // No address names an interface: the first inside the sandbox.
        let r = parse(
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0"},{"name":"pod0","sandbox":"/x"}],
            "ips":[{"address":"10.22.0.5/16"}]}"#,
        );
        assert_eq!(r.sandbox_interface(), Some("pod0"));
        // None inside, no interfaces at all (0.2.0), or a name crid will not use.
        for s in [
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0"}]}"#,
            r#"{"cniVersion":"0.2.0","ip4":{"ip":"10.3.0.7/24"}}"#,
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"e;reboot","sandbox":"/x"}]}"#,
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"a-very-long-name0","sandbox":"/x"}]}"#,
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"..","sandbox":"/x"}]}"#,
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"","sandbox":"/x"}]}"#,
        ] {
            assert_eq!(parse(s).sandbox_interface(), None, "{s}");
        }
    }

    #[test]
    fn result_0_4_0_ipv6_first_is_reordered() {
        let v: Value = serde_json::from_str(
            r#"{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/x"}],
            "ips":[{"version":"6","address":"fd00::2/64","interface":0},
                   {"version":"4","address":"10.1.2.3/24","gateway":"10.1.2.1","interface":0}]}"#,
        )
        .unwrap();
        let r = CniResult::parse(&v).unwrap();
        assert_eq!(r.pod_ips()[0].to_string(), "10.1.2.3");
    }

    #[test]
    fn result_0_2_0() {
        let v: Value = serde_json::from_str(
            r#"{"cniVersion":"0.2.0","ip4":{"ip":"10.3.0.7/24","gateway":"10.3.0.1"}}"#,
        )
        .unwrap();
        let r = CniResult::parse(&v).unwrap();
        assert_eq!(r.pod_ips()[0].to_string(), "10.3.0.7");
    }

    /// Every single-byte mutation of a valid result that is still JSON parses or is refused;
    /// none panics.
    #[test]
    fn mutations_never_panic() {
        let valid = br#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.1.2.3/24","gateway":"10.1.2.1","interface":0}],"dns":{"nameservers":["1.1.1.1"]},"ip4":{"ip":"10.0.0.1/8"}}"#;
        let replacements = b"0 9:/.,[]{}\"-ae";
        let mut parsed = 0;
        for i in 0..valid.len() {
            for &r in replacements {
                let mut m = valid.to_vec();
                m[i] = r;
                if let Ok(v) = serde_json::from_slice::<Value>(&m) {
                    parsed += 1;
                    let _ = CniResult::parse(&v).map(|r| r.pod_ips());
                }
            }
            if let Ok(v) = serde_json::from_slice::<Value>(&valid[..i]) {
                let _ = CniResult::parse(&v);
            }
        }
        assert!(parsed > 100);
    }

    #[test]
    fn bad_results_are_refused() {
        for bad in [
            r#"[]"#,
            r#"{"ips":[{"address":"10.0.0.1"}]}"#,
            r#"{"ips":[{"address":"10.0.0.1/33"}]}"#,
            r#"{"ips":[{"address":"zz/8"}]}"#,
            r#"{"ips":[{"address":"10.0.0.1/8","interface":4}]}"#,
            r#"{"ips":[{"address":"10.0.0.1/8","gateway":5}]}"#,
            r#"{"ip4":{"gateway":"10.0.0.1"}}"#,
        ] {
            let v: Value = serde_json::from_str(bad).unwrap();
            assert!(CniResult::parse(&v).is_err(), "{bad}");
        }
    }
}
