//! Container adjustments: applying one to the container a later plugin sees, and merging the
//! adjustments of several plugins into one for the runtime. A later plugin (higher index)
//! overrides an earlier one on the same key, env name, mount destination or resource field;
//! a name marked with a leading `-` removes the entry.

use crate::api;

/// The name a removal marker (`-name`) removes, if `key` is one.
pub fn removal(key: &str) -> Option<&str> {
    key.strip_prefix('-')
}

/// Applies `adjust` to `c`.
pub fn apply(c: &mut api::Container, adjust: &api::ContainerAdjustment) {
    for (k, v) in &adjust.annotations {
        match removal(k) {
            Some(k) => {
                c.annotations.remove(k);
            }
            None => {
                c.annotations.insert(k.clone(), v.clone());
            }
        }
    }
    for kv in &adjust.env {
        let name = removal(&kv.key).unwrap_or(&kv.key);
        c.env.retain(|e| e.split('=').next() != Some(name));
        if removal(&kv.key).is_none() {
            c.env.push(format!("{}={}", kv.key, kv.value));
        }
    }
    for m in &adjust.mounts {
        let dest = removal(&m.destination).unwrap_or(&m.destination);
        c.mounts.retain(|x| x.destination != dest);
        if removal(&m.destination).is_none() {
            c.mounts.push(m.clone());
        }
    }
    if !adjust.args.is_empty() {
        c.args = adjust.args.clone();
    }
    if let Some(h) = &adjust.hooks {
        append_hooks(c.hooks.get_or_insert_with(Default::default), h);
    }
    set_rlimits(&mut c.rlimits, &adjust.rlimits);
    if let Some(l) = &adjust.linux {
        let linux = c.linux.get_or_insert_with(Default::default);
        linux.devices.extend(l.devices.iter().cloned());
        if let Some(r) = &l.resources {
            merge_resources(linux.resources.get_or_insert_with(Default::default), r);
        }
        if l.oom_score_adj.is_some() {
            linux.oom_score_adj = l.oom_score_adj;
        }
    }
}

/// Merges `next` into `into` (`next` wins).
pub fn merge(into: &mut api::ContainerAdjustment, next: api::ContainerAdjustment) {
    for (k, v) in next.annotations {
        let name = removal(&k).unwrap_or(&k).to_owned();
        into.annotations.remove(&name);
        into.annotations.remove(&format!("-{name}"));
        into.annotations.insert(k, v);
    }
    for kv in next.env {
        let name = removal(&kv.key).unwrap_or(&kv.key).to_owned();
        into.env
            .retain(|e| removal(&e.key).unwrap_or(&e.key) != name);
        into.env.push(kv);
    }
    for m in next.mounts {
        let dest = removal(&m.destination).unwrap_or(&m.destination).to_owned();
        into.mounts
            .retain(|x| removal(&x.destination).unwrap_or(&x.destination) != dest);
        into.mounts.push(m);
    }
    if !next.args.is_empty() {
        into.args = next.args;
    }
    if let Some(h) = &next.hooks {
        append_hooks(into.hooks.get_or_insert_with(Default::default), h);
    }
    set_rlimits(&mut into.rlimits, &next.rlimits);
    if let Some(l) = next.linux {
        let linux = into.linux.get_or_insert_with(Default::default);
        linux.devices.extend(l.devices);
        if let Some(r) = &l.resources {
            merge_resources(linux.resources.get_or_insert_with(Default::default), r);
        }
        if l.oom_score_adj.is_some() {
            linux.oom_score_adj = l.oom_score_adj;
        }
    }
}

/// Hooks add up, in plugin order.
pub fn append_hooks(into: &mut api::Hooks, next: &api::Hooks) {
    into.prestart.extend(next.prestart.iter().cloned());
    into.create_runtime
        .extend(next.create_runtime.iter().cloned());
    into.create_container
        .extend(next.create_container.iter().cloned());
    into.start_container
        .extend(next.start_container.iter().cloned());
    into.poststart.extend(next.poststart.iter().cloned());
    into.poststop.extend(next.poststop.iter().cloned());
}

/// A limit of a type replaces the one of that type.
pub fn set_rlimits(into: &mut Vec<api::PosixRlimit>, next: &[api::PosixRlimit]) {
    for r in next {
        into.retain(|x| x.r#type != r.r#type);
        into.push(r.clone());
    }
}

/// Field by field, what `next` sets wins.
pub fn merge_resources(into: &mut api::LinuxResources, next: &api::LinuxResources) {
    if let Some(m) = &next.memory {
        let into = into.memory.get_or_insert_with(Default::default);
        into.limit = m.limit.or(into.limit);
        into.reservation = m.reservation.or(into.reservation);
        into.swap = m.swap.or(into.swap);
    }
    if let Some(c) = &next.cpu {
        let into = into.cpu.get_or_insert_with(Default::default);
        into.shares = c.shares.or(into.shares);
        into.quota = c.quota.or(into.quota);
        into.period = c.period.or(into.period);
        if !c.cpus.is_empty() {
            into.cpus = c.cpus.clone();
        }
        if !c.mems.is_empty() {
            into.mems = c.mems.clone();
        }
    }
    if !next.hugepage_limits.is_empty() {
        into.hugepage_limits = next.hugepage_limits.clone();
    }
    for (k, v) in &next.unified {
        into.unified.insert(k.clone(), v.clone());
    }
    if next.pids.is_some() {
        into.pids = next.pids.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> api::KeyValue {
        api::KeyValue {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn env_is_set_replaced_and_removed() {
        let mut c = api::Container {
            env: vec!["A=1".into(), "B=2".into()],
            ..Default::default()
        };
        let adjust = api::ContainerAdjustment {
            env: vec![kv("A", "9"), kv("-B", ""), kv("C", "3")],
            ..Default::default()
        };
        apply(&mut c, &adjust);
        assert_eq!(c.env, vec!["A=9", "C=3"]);
    }

    #[test]
    fn a_later_plugin_wins_and_a_removal_replaces_an_addition() {
        let mut merged = api::ContainerAdjustment::default();
        merge(
            &mut merged,
            api::ContainerAdjustment {
                env: vec![kv("A", "1"), kv("B", "1")],
                args: vec!["first".into()],
                ..Default::default()
            },
        );
        merge(
            &mut merged,
            api::ContainerAdjustment {
                env: vec![kv("A", "2"), kv("-B", "")],
                ..Default::default()
            },
        );
        assert_eq!(merged.env, vec![kv("A", "2"), kv("-B", "")]);
        assert_eq!(merged.args, vec!["first"]);
    }

    #[test]
    fn resources_merge_field_by_field() {
        let mut r = api::LinuxResources {
            memory: Some(api::LinuxMemory {
                limit: Some(api::OptionalInt64 { value: 100 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        merge_resources(
            &mut r,
            &api::LinuxResources {
                cpu: Some(api::LinuxCpu {
                    shares: Some(api::OptionalUInt64 { value: 512 }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        assert_eq!(r.memory.unwrap().limit.unwrap().value, 100);
        assert_eq!(r.cpu.unwrap().shares.unwrap().value, 512);
    }
}
