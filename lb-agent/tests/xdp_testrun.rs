//! The XDP forward path and the TC reply path on crafted packets through BPF_PROG_TEST_RUN:
//! the real programs from the embedded object, the maps written by the real sync from a
//! Service, and every output checked byte for byte (addresses, ports, checksums, verdict).

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context, Result};
use aya::maps::{PerCpuArray, PerCpuValues};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use lb_agent::datapath::{EBPF_OBJECT, kfunc, maps::BpfMaps, snat_addrs::SnatAddrs};
use lb_agent::k8s::{
    Snapshot,
    translate::{NodeContext, translate_for},
};
use lb_agent::sync::{Capacity, Datapath, MapState, Syncer};
use lb_common::{flow, map_names, program_names, v4_mapped, xdp_stat};
use lb_testkit::packets::{Frame, Seen, TCP, UDP, build, read};
use lb_testkit::privileged_or_skip;
use serde_json::json;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const MAGLEV_SIZE: u32 = 251;
const NODE: &str = "192.168.0.5";
const LB: &str = "192.0.2.10";
const EXT6: &str = "2001:db8:7::7";
const CLIENT: &str = "203.0.113.50";

struct Rig {
    ebpf: Ebpf,
    syncer: Syncer<BpfMaps>,
    snat: SnatAddrs,
}

fn capacity() -> Capacity {
    Capacity {
        maglev_size: MAGLEV_SIZE,
        maglev_tables: 16,
        ..Capacity::default()
    }
}

fn snapshot(pods: &[u8]) -> Snapshot {
    let svc = json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20",
                 "clusterIPs": ["10.96.0.20", "fd00:96::20"], "ipFamilies": ["IPv4", "IPv6"],
                 "externalIPs": ["198.51.100.7", EXT6],
                 "loadBalancerSourceRanges": ["203.0.113.0/24"],
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080},
                           {"name": "dns", "protocol": "UDP", "port": 53, "nodePort": 30053}]},
        "status": {"loadBalancer": {"ingress": [{"ip": LB}]}}
    });
    let eps: Vec<_> = pods
        .iter()
        .map(|p| {
            json!({"addresses": [format!("10.244.{p}.2")],
                   "nodeName": if *p < 3 { "node-a" } else { "node-b" }})
        })
        .collect();
    let ports = json!([{"name": "http", "protocol": "TCP", "port": 8080},
                       {"name": "dns", "protocol": "UDP", "port": 5353}]);
    let v4 = json!({"metadata": {"name": "web-4", "namespace": "default",
        "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": ports, "endpoints": eps});
    let v6 = json!({"metadata": {"name": "web-6", "namespace": "default",
        "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv6", "ports": ports, "endpoints": [{"addresses": ["fd00:244:1::2"]}]});
    Snapshot {
        services: vec![serde_json::from_value(svc).expect("service")],
        slices: vec![
            serde_json::from_value(v4).expect("slice"),
            serde_json::from_value(v6).expect("slice"),
        ],
        ..Default::default()
    }
}

/// The agent's node: unnamed (every endpoint counts as local) or node-a (pods 1 and 2 are
/// local, the others on node-b).
fn sync_as(syncer: &mut Syncer<BpfMaps>, pods: &[u8], node_name: Option<&str>) -> Result<()> {
    let node = NodeContext {
        node_ips: vec![NODE.parse()?, "fd00::5".parse()?],
        node_name: node_name.map(String::from),
        ..Default::default()
    };
    let t = translate_for(&snapshot(pods), &node);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let r = syncer.sync(&t.desired)?;
    assert_eq!(r.failed_writes, 0);
    assert!(r.overflows.is_empty(), "{:?}", r.overflows);
    Ok(())
}

fn sync(syncer: &mut Syncer<BpfMaps>, pods: &[u8]) -> Result<()> {
    sync_as(syncer, pods, None)
}

impl Rig {
    fn new() -> Result<Self> {
        let cap = capacity();
        // The object as the agent loads it: kfunc calls resolved for this kernel.
        let object = kfunc::resolve_for_kernel(EBPF_OBJECT)?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::MAGLEV, cap.maglev_size * cap.maglev_tables)
            .load(object.bytes())
            .context("loading the object")?;
        let maps = BpfMaps::from_ebpf(&mut ebpf)?;
        let xdp: &mut Xdp = ebpf
            .program_mut(program_names::XDP_FORWARD)
            .context("xdp program")?
            .try_into()?;
        xdp.load().context("verifier: xdp")?;
        let tc: &mut SchedClassifier = ebpf
            .program_mut(program_names::TC_REPLY)
            .context("tc program")?
            .try_into()?;
        tc.load().context("verifier: tc")?;
        let snat = SnatAddrs::take(&mut ebpf)?;
        let mut syncer = Syncer::new(maps, cap);
        sync(&mut syncer, &[1, 2, 3])?;
        Ok(Self { ebpf, syncer, snat })
    }

    fn xdp(&self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let prog: &Xdp = self
            .ebpf
            .program(program_names::XDP_FORWARD)
            .context("xdp")?
            .try_into()?;
        run(prog, frame)
    }

    fn tc(&self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(program_names::TC_REPLY)
            .context("tc")?
            .try_into()?;
        run(prog, frame)
    }

    fn stat(&self, index: u32) -> Result<u64> {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(map_names::XDP_STATS).context("stats")?)?;
        let v: PerCpuValues<u64> = map.get(&index, 0)?;
        Ok(v.iter().sum())
    }

    fn state(&self) -> Result<MapState> {
        self.syncer.datapath().read()
    }
}

fn run<P>(prog: &P, frame: &[u8]) -> Result<(u32, Vec<u8>)>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// The backend the user-space Maglev table gives this flow (must equal the kernel's pick).
fn maglev_pick(state: &MapState, f: &Frame, frontend_port: u16) -> IpAddr {
    let to16 = |a: IpAddr| match a {
        IpAddr::V4(v) => v4_mapped(v.octets()),
        IpAddr::V6(v) => v.octets(),
    };
    let key = state
        .frontends()
        .find(|(k, _)| {
            k.scope == lb_common::scope::EXTERNAL
                && k.addr == to16(f.dst)
                && k.port == frontend_port
                && k.proto == f.proto
        })
        .expect("external frontend");
    let table = &state.maglev[&(key.1.maglev_table - 1)];
    let h = flow::hash(&to16(f.src), &to16(f.dst), f.sport, f.dport, f.proto);
    let id = table[flow::maglev_index(h, MAGLEV_SIZE) as usize];
    lb_agent::sync::map_state::addr_from_map(&state.backends[&id].addr)
}

fn assert_rewritten(seen: &Seen, f: &Frame, backend_port: u16) {
    assert!(seen.ip_ok && seen.l4_ok, "checksums: {seen:?}");
    assert_eq!((seen.src, seen.sport), (f.src, f.sport), "source kept");
    assert_eq!(seen.dport, backend_port);
}

#[test]
fn xdp_translates_hits_passes_misses_and_keeps_checksums() -> Result<()> {
    if !privileged_or_skip("xdp test run") {
        return Ok(());
    }
    let rig = Rig::new()?;
    let state = rig.state()?;
    let pods: Vec<IpAddr> = ["10.244.1.2", "10.244.2.2", "10.244.3.2"].map(ip).to_vec();

    // IPv4 TCP and UDP (with and without a checksum) to a NodePort, an external IP and the
    // LB address (the source is inside loadBalancerSourceRanges), with 0, 1 and 2 VLAN tags.
    let mut cases = Vec::new();
    for (dst, tcp_port, udp_port) in [(NODE, 30080, 30053), ("198.51.100.7", 80, 53), (LB, 80, 53)]
    {
        for vlans in [vec![], vec![7], vec![100, 7]] {
            let mut t = Frame::new(CLIENT, 40000, dst, tcp_port, TCP);
            t.vlans = vlans.clone();
            cases.push((t, tcp_port, 8080));
            let mut u = Frame::new(CLIENT, 40001, dst, udp_port, UDP);
            u.vlans = vlans.clone();
            cases.push((u.clone(), udp_port, 5353));
            u.udp_no_checksum = true;
            u.sport = 40002;
            cases.push((u, udp_port, 5353));
        }
    }
    for (f, fport, bport) in &cases {
        let (verdict, out) = rig.xdp(&build(f))?;
        assert_eq!(verdict, XDP_PASS, "{f:?}");
        let seen = read(&out);
        assert_rewritten(&seen, f, *bport);
        assert!(pods.contains(&seen.dst), "{seen:?}");
        assert_eq!(
            seen.dst,
            maglev_pick(&state, f, *fport),
            "kernel and Maglev table agree"
        );
        if f.udp_no_checksum {
            assert_eq!(seen.l4_check, 0, "UDP without checksum stays without");
        }
    }

    // IPv6 TCP and UDP to the IPv6 external IP.
    for (p, port, bport) in [(TCP, 80, 8080), (UDP, 53, 5353)] {
        let f = Frame::new("2001:db8::50", 40000, EXT6, port, p);
        let (verdict, out) = rig.xdp(&build(&f))?;
        assert_eq!(verdict, XDP_PASS);
        let seen = read(&out);
        assert_rewritten(&seen, &f, bport);
        assert_eq!(seen.dst, ip("fd00:244:1::2"));
    }

    // Misses, fragments, truncated and non-IP frames pass untouched.
    let passed_before = rig.stat(xdp_stat::PASSED)?;
    let mut untouched = vec![
        build(&Frame::new(CLIENT, 40000, NODE, 30081, TCP)), // no such port
        build(&Frame::new(CLIENT, 40000, "10.96.0.20", 80, TCP)), // ClusterIPs are internal only
        build(&Frame::new(CLIENT, 40000, NODE, 30053, TCP)), // UDP port, TCP packet
    ];
    let passes = untouched.len() as u64;
    let mut frag = Frame::new(CLIENT, 40000, NODE, 30080, UDP);
    frag.fragment = true;
    untouched.push(build(&frag));
    let mut frag6 = Frame::new("2001:db8::50", 40000, EXT6, 80, UDP);
    frag6.fragment = true;
    untouched.push(build(&frag6));
    let whole = build(&Frame::new(CLIENT, 40000, NODE, 30080, TCP));
    untouched.push(whole[..14 + 20 + 10].to_vec()); // cut inside the TCP header
    let mut arp = whole.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    untouched.push(arp);
    for frame in &untouched {
        let (verdict, out) = rig.xdp(frame)?;
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(&out, frame, "left as it was");
    }
    assert_eq!(rig.stat(xdp_stat::PASSED)? - passed_before, passes);
    assert!(rig.stat(xdp_stat::FRAGMENTS)? >= 2);

    // A packet with a wrong checksum stays wrong (the pod's stack drops it, as it would have).
    let mut bad = build(&Frame::new(CLIENT, 40100, NODE, 30080, TCP));
    let n = bad.len();
    bad[n - 1] ^= 0x55;
    let (verdict, out) = rig.xdp(&bad)?;
    assert_eq!(verdict, XDP_PASS);
    let seen = read(&out);
    assert!(seen.ip_ok && !seen.l4_ok, "{seen:?}");
    assert!(pods.contains(&seen.dst));
    Ok(())
}

#[test]
fn xdp_enforces_source_ranges_and_drops_without_backends() -> Result<()> {
    if !privileged_or_skip("xdp test run") {
        return Ok(());
    }
    let mut rig = Rig::new()?;
    let outsider = Frame::new("198.18.0.1", 40000, LB, 80, TCP);
    let (verdict, _) = rig.xdp(&build(&outsider))?;
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(rig.stat(xdp_stat::DROPPED_SOURCE_RANGE)?, 1);
    // Source ranges are the LB address's only: the NodePort takes the same client.
    let (verdict, _) = rig.xdp(&build(&Frame::new("198.18.0.1", 40000, NODE, 30080, TCP)))?;
    assert_eq!(verdict, XDP_PASS);

    sync(&mut rig.syncer, &[])?;
    let (verdict, _) = rig.xdp(&build(&Frame::new(CLIENT, 40000, NODE, 30080, TCP)))?;
    assert_eq!(
        verdict, XDP_DROP,
        "no endpoints: dropped, as kube-proxy does"
    );
    assert!(rig.stat(xdp_stat::DROPPED_NO_BACKEND)? >= 1);
    Ok(())
}

#[test]
fn flows_keep_their_backend_when_the_maglev_table_changes() -> Result<()> {
    if !privileged_or_skip("xdp test run") {
        return Ok(());
    }
    let mut rig = Rig::new()?;
    let flows: Vec<Frame> = (0..600)
        .map(|i| Frame::new(CLIENT, 20000 + i, NODE, 30080, TCP))
        .collect();
    let mut first = BTreeMap::new();
    for f in &flows {
        let (_, out) = rig.xdp(&build(f))?;
        first.insert(f.sport, read(&out).dst);
    }
    let mut spread: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for b in first.values() {
        *spread.entry(*b).or_default() += 1;
    }
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert!(spread.values().all(|&n| n > 120), "{spread:?}");

    // A fourth backend: the table changes, tracked flows stay where they were...
    sync(&mut rig.syncer, &[1, 2, 3, 4])?;
    let state = rig.state()?;
    let mut would_move = 0;
    for f in &flows {
        let (_, out) = rig.xdp(&build(f))?;
        assert_eq!(
            read(&out).dst,
            first[&f.sport],
            "tracked flow {} moved",
            f.sport
        );
        if maglev_pick(&state, f, 30080) != first[&f.sport] {
            would_move += 1;
        }
    }
    // ...although the new table sends about a quarter of these tuples elsewhere.
    assert!(would_move > 60, "only {would_move} entries changed");
    // New flows do use the new backend.
    let fresh: Vec<IpAddr> = (0..200)
        .map(|i| {
            let (_, out) = rig.xdp(&build(&Frame::new(CLIENT, 50000 + i, NODE, 30080, TCP)))?;
            Ok(read(&out).dst)
        })
        .collect::<Result<_>>()?;
    assert!(fresh.contains(&ip("10.244.4.2")));

    // A removed backend: its flows go elsewhere, the others stay.
    sync(&mut rig.syncer, &[1, 3, 4])?;
    for f in &flows {
        let (_, out) = rig.xdp(&build(f))?;
        let now = read(&out).dst;
        if first[&f.sport] == ip("10.244.2.2") {
            assert_ne!(now, ip("10.244.2.2"));
        } else {
            assert_eq!(now, first[&f.sport]);
        }
    }
    Ok(())
}

#[test]
fn tc_gives_replies_the_frontend_address_back() -> Result<()> {
    if !privileged_or_skip("tc test run") {
        return Ok(());
    }
    let rig = Rig::new()?;
    for (p, dst, port, bport, udp_no_check) in [
        (TCP, LB, 80, 8080, false),
        (UDP, NODE, 30053, 5353, false),
        (UDP, NODE, 30053, 5353, true),
    ] {
        let mut f = Frame::new(CLIENT, 41000, dst, port, p);
        f.udp_no_checksum = udp_no_check;
        let (_, out) = rig.xdp(&build(&f))?;
        let backend = read(&out).dst;
        // The backend answers the client straight (the client address was kept).
        let mut reply = Frame::new(&backend.to_string(), bport, CLIENT, 41000, p);
        reply.udp_no_checksum = udp_no_check;
        let (verdict, out) = rig.tc(&build(&reply))?;
        assert_eq!(verdict, 0, "TC_ACT_OK");
        let seen = read(&out);
        assert_eq!((seen.src, seen.sport), (ip(dst), port), "{seen:?}");
        assert_eq!((seen.dst, seen.dport), (ip(CLIENT), 41000));
        assert!(seen.ip_ok && seen.l4_ok, "{seen:?}");
        if udp_no_check {
            assert_eq!(seen.l4_check, 0);
        }
    }
    // IPv6.
    let f = Frame::new("2001:db8::50", 41001, EXT6, 80, TCP);
    rig.xdp(&build(&f))?;
    let (_, out) = rig.tc(&build(&Frame::new(
        "fd00:244:1::2",
        8080,
        "2001:db8::50",
        41001,
        TCP,
    )))?;
    let seen = read(&out);
    assert_eq!((seen.src, seen.sport), (ip(EXT6), 80));
    assert!(seen.l4_ok);
    // Traffic nobody translated leaves as it is.
    let other = build(&Frame::new("10.244.1.2", 8080, "198.18.0.9", 5555, TCP));
    let (_, out) = rig.tc(&other)?;
    assert_eq!(out, other);
    assert!(rig.stat(xdp_stat::REPLIES)? >= 4);
    Ok(())
}

#[test]
fn flows_to_backends_on_other_nodes_are_snated_and_their_replies_undone() -> Result<()> {
    if !privileged_or_skip("xdp test run") {
        return Ok(());
    }
    let mut rig = Rig::new()?;
    // This is node-a: pod 3 is on node-b. With no SNAT address, its flows are dropped.
    sync_as(&mut rig.syncer, &[1, 2, 3], Some("node-a"))?;
    let remote = ip("10.244.3.2");
    let state = rig.state()?;
    let to_remote: Vec<Frame> = (0..300)
        .map(|i| Frame::new(CLIENT, 30000 + i, NODE, 30080, TCP))
        .filter(|f| maglev_pick(&state, f, 30080) == remote)
        .take(20)
        .collect();
    assert!(to_remote.len() >= 10);
    let (verdict, _) = rig.xdp(&build(&to_remote[0]))?;
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(rig.stat(xdp_stat::DROPPED_SNAT)?, 1);

    let node_ip = ip(NODE);
    rig.snat.write([Some(node_ip), Some(ip("fd00::5"))])?;
    let mut ports = std::collections::BTreeSet::new();
    for (p, f) in [
        (TCP, to_remote[1].clone()),
        (UDP, {
            let mut u = to_remote[2].clone();
            u.proto = UDP;
            u.dport = 30053;
            u
        }),
    ] {
        let (verdict, out) = rig.xdp(&build(&f))?;
        assert_eq!(verdict, XDP_PASS);
        let seen = read(&out);
        if seen.dst != remote {
            // The UDP frontend has its own table: this tuple may pick a local pod there.
            assert_eq!(p, UDP);
            assert_eq!(seen.src, f.src, "local backends see the client");
            continue;
        }
        assert!(seen.ip_ok && seen.l4_ok, "{seen:?}");
        assert_eq!(seen.src, node_ip, "SNATed to this node");
        assert!((61_000..65_535).contains(&seen.sport), "{seen:?}");
        // The same flow keeps its port.
        let (_, again) = rig.xdp(&build(&f))?;
        assert_eq!(read(&again).sport, seen.sport);
        ports.insert(seen.sport);
        // The backend's reply to the SNAT address goes back to the client, from the frontend.
        let reply = Frame::new(&remote.to_string(), seen.dport, NODE, seen.sport, p);
        let (verdict, out) = rig.xdp(&build(&reply))?;
        assert_eq!(verdict, XDP_PASS);
        let back = read(&out);
        assert_eq!((back.src, back.sport), (f.dst, f.dport), "{back:?}");
        assert_eq!((back.dst, back.dport), (f.src, f.sport));
        assert!(back.ip_ok && back.l4_ok, "{back:?}");
    }
    // Different flows get different ports.
    for f in &to_remote[3..] {
        let (_, out) = rig.xdp(&build(f))?;
        ports.insert(read(&out).sport);
    }
    assert!(ports.len() >= to_remote.len() - 2, "{ports:?}");
    assert!(rig.stat(xdp_stat::SNATED)? >= 3);
    assert!(rig.stat(xdp_stat::SNAT_REPLIES)? >= 1);
    // Local backends are never SNATed.
    let local = (0..300)
        .map(|i| Frame::new(CLIENT, 40000 + i, NODE, 30080, TCP))
        .find(|f| maglev_pick(&state, f, 30080) != remote)
        .expect("a flow to a local pod");
    let (_, out) = rig.xdp(&build(&local))?;
    assert_eq!(read(&out).src, local.src);
    Ok(())
}
