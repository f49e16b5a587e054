//! Rules by domain name (`dst_fqdn`): the program reads DNS in both directions.
//! - A query leaving through the hook (the classifier, `query`): its question
//!   name is matched against the patterns. When the first rule naming a matching
//!   pattern denies, the query is dropped. Otherwise a query to a listed
//!   resolver is remembered (DNS_QUERIES) until its answer. UDP, or TCP where
//!   one segment holds the whole message (after its 2-byte length).
//! - An answer coming back (the companion program on the other direction,
//!   `answer`): from a listed resolver, to a remembered query (transaction id,
//!   client port, resolver and question), neither truncated nor malformed. Then
//!   every A/AAAA record of its answer section is learned for every pattern the
//!   question matches, for clamp(TTL, min_ttl, max_ttl), before the packet
//!   is handed on: the application's first connection already finds it.
//! - A packet whose destination was learned (`verdict`): the rules of each
//!   learned pattern are looked up like a destination class's; the earliest
//!   rule wins against the address rules' answer.
//!
//! Parsing is bounded: the message is copied into per-CPU scratch memory (at
//! most `DNS_BUF` bytes) and read with masked indexes; names are walked label
//! by label, compression pointers are never followed (an answer's owner names
//! are skipped, a pointer in the question is malformed), and every loop has a
//! fixed bound. Loop state the verifier need not track lives in the scratch
//! memory, which keeps the number of states it explores small.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_loop},
};
use egress_common::{
    ACTION_ALLOW, ACTION_DENY, DNS_BUF, DNS_MAX_LABELS, DNS_MAX_NAME_PATTERNS, DNS_MAX_RECORDS, DNS_QUERY_TIMEOUT_NS, DNS_WAYS, DS_ANSWERS,
    DS_EVICTED, DS_LEARNED, DS_MALFORMED, DS_NO_QUERY, DS_NOT_RESOLVER, DS_QUERIES, DS_QUERIES_DENIED, DS_REFRESHED, DS_TABLE_FULL,
    DnsName, FLOW_DEADLINE_SHIFT, LearnBucket, LearnWay, PAT_EXACT, PAT_WILD, PCLASS_TCP, PatKey, QueryKey, QueryValue, ResolverKey,
    Verdict, dns_label_byte, dns_label_end, dns_label_start, dns_lower, dns_question, dns_suffix, flow_learned_tag, learn_bucket,
    learn_seal,
};

use crate::{
    classify,
    frame::Frame,
    maps::{DNS_CLASSES, DNS_LEARN_V4, DNS_LEARN_V6, DNS_NAMES, DNS_PATTERNS, DNS_QUERIES, DNS_RESOLVERS, DNS_SCRATCH, DNS_STATS},
    parse::Packet,
};

/// Load-time globals (set by user space).
#[unsafe(no_mangle)]
static DNS_ON: u32 = 0;
#[unsafe(no_mangle)]
static DNS_KEY0: u64 = 0;
#[unsafe(no_mangle)]
static DNS_KEY1: u64 = 0;
#[unsafe(no_mangle)]
static DNS_MIN_TTL: u64 = 60;
#[unsafe(no_mangle)]
static DNS_MAX_TTL: u64 = 86_400;
#[unsafe(no_mangle)]
static DNS_BUCKET_MASK: u32 = 0;

const UDP_HLEN: usize = 8;
const HDR: usize = 12;
const MASK: usize = DNS_BUF - 1;
const LMASK: usize = DNS_MAX_LABELS - 1;
/// Steps of the answer walk: a label of an owner name, or a record's fixed part.
const ANSWER_STEPS: u32 = 192;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// The parser's working memory (DNS_SCRATCH, one per CPU). The loops run
/// under `bpf_loop` (the verifier checks each body once, whatever the count);
/// their state lives here, and every index read back from it is masked.
pub struct Scratch {
    buf: [u8; DNS_BUF],
    labels: [u64; DNS_MAX_LABELS],
    name: DnsName,
    pats: [u64; DNS_MAX_NAME_PATTERNS],
    addrs: [[u8; 16]; DNS_MAX_RECORDS],
    ttls: [u32; DNS_MAX_RECORDS],
    v6: [u8; DNS_MAX_RECORDS],
    /// The best verdict so far of [`learned`].
    best: Verdict,
    /// Map keys and values built here, not on the stack (BPF's 512 bytes).
    qk: QueryKey,
    qv: QueryValue,
    rk: ResolverKey,
    pk: PatKey,
    /// The message's length in `buf`.
    n: u64,
    /// Always 0: the union class's key.
    zero: u64,
    /// [`learned`]: the first rule by name that could match the packet.
    any_rule: u32,
    /// [`learned`]: the destination bucket's epoch, read before its ways, and
    /// the earliest expiry of what is learned for the destination (ns).
    _pad2: u32,
    epoch: u64,
    deadline: u64,
    /// Walk position, and (question) the label's hash so far.
    i: u64,
    h: u64,
    /// Suffix hash (patterns).
    acc: u64,
    /// Learning: now, the TTL bounds, the name's hash, the answer's addresses taught.
    now: u64,
    name_hash: u64,
    taught: u64,
    npats: u32,
    nrec: u32,
    nlabels: u32,
    first_rule: u32,
    first_action: u32,
    /// Question: bytes left in the current label and its length.
    left: u32,
    cur: u32,
    /// Answer walk: records walked, records to walk, inside an owner name.
    rr: u32,
    count: u32,
    in_name: u32,
    /// A loop's outcome: 0 running, 1 done, 2 malformed.
    state: u32,
    _pad: u32,
}

const RUNNING: u32 = 0;
const DONE: u32 = 1;
const BAD: u32 = 2;

#[inline(always)]
pub(crate) fn global<T: Copy>(g: &T) -> T {
    // read_volatile: keep the loader-patched value instead of the compiled-in one.
    unsafe { core::ptr::read_volatile(g) }
}

/// Whether the rule set names domains.
#[inline(always)]
pub fn on() -> bool {
    global(&DNS_ON) != 0
}

#[inline(always)]
fn bump(slot: u32) {
    if let Some(c) = DNS_STATS.get_ptr_mut(slot) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn now() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    DNS_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn be16(s: &Scratch, i: usize) -> u16 {
    u16::from_be_bytes([s.buf[i & MASK], s.buf[(i + 1) & MASK]])
}

/// Runs `step` up to `n` times through the `bpf_loop` helper.
#[inline(always)]
fn run(n: u32, step: extern "C" fn(u64, *mut c_void) -> i64) {
    unsafe { bpf_loop(n, step as *mut c_void, core::ptr::null_mut(), 0) };
}

/// What [`load_msg`] found.
#[derive(PartialEq, Eq)]
enum Msg {
    /// No DNS payload at all (a TCP segment without data: nothing to say).
    Empty,
    /// A payload that cannot be one whole DNS message (too short; over TCP,
    /// a message that does not fit this one segment).
    Bad,
    /// The message is in the scratch buffer (`s.n` bytes); `true`: it was
    /// longer than the buffer.
    Loaded(bool),
}

/// Copies the DNS message (from its header) into the scratch buffer. UDP: the
/// datagram's payload. TCP: a segment holding exactly one whole message after
/// its 2-byte length (the common case for an answer that fits one segment).
#[inline(always)]
fn load_msg<C: Frame>(ctx: &C, pkt: &Packet, s: &mut Scratch) -> Msg {
    let total = ctx.bytes() as usize;
    let off = if pkt.pclass == PCLASS_TCP {
        let Ok(doff) = ctx.load::<u8>(pkt.l4 as usize + 12) else { return Msg::Empty };
        let data = pkt.l4 as usize + ((doff >> 4) as usize) * 4;
        if total <= data {
            return Msg::Empty;
        }
        let Ok(len) = ctx.load::<[u8; 2]>(data) else { return Msg::Bad };
        if u16::from_be_bytes(len) as usize != total - data - 2 {
            return Msg::Bad;
        }
        data + 2
    } else {
        pkt.l4 as usize + UDP_HLEN
    };
    if total < off + HDR + 5 {
        return Msg::Bad;
    }
    let mut n = total - off;
    let longer = n > DNS_BUF;
    if longer {
        n = DNS_BUF;
    }
    // 1..=DNS_BUF in a form the verifier follows (n >= HDR + 5 here).
    let len = ((n as u32 - 1) & (DNS_BUF as u32 - 1)) + 1;
    if !ctx.load_into(off, s.buf.as_mut_ptr(), len) {
        return Msg::Bad;
    }
    s.n = len as u64;
    Msg::Loaded(longer)
}

/// One byte of the question name.
extern "C" fn name_step(w: u64, _: *mut c_void) -> i64 {
    let Some(s) = scratch() else { return 1 };
    let i = s.i as usize;
    if i >= s.n as usize {
        s.state = BAD;
        return 1;
    }
    let b = s.buf[i & MASK];
    s.name.wire[w as usize & 255] = dns_lower(b);
    s.i += 1;
    if s.left == 0 {
        if b == 0 {
            s.name.len = w as u32 + 1;
            s.state = DONE;
            return 1;
        }
        if b > 63 || s.nlabels as usize >= DNS_MAX_LABELS {
            s.state = BAD;
            return 1;
        }
        s.left = b as u32;
        s.cur = b as u32;
        s.h = dns_label_start(global(&DNS_KEY0));
    } else {
        s.h = dns_label_byte(s.h, b);
        s.left -= 1;
        if s.left == 0 {
            let k = s.nlabels as usize & LMASK;
            s.labels[k] = dns_label_end(s.h, s.cur as u8);
            s.nlabels += 1;
        }
    }
    0
}

/// Reads the question name at the header's end into `s.labels` (one hash per
/// label), `s.nlabels` and `s.name`; returns the offset after it. None: not a
/// name this parser accepts (a pointer, a label over 63 bytes, too long).
#[inline(always)]
fn question_name(s: &mut Scratch) -> Option<usize> {
    s.i = HDR as u64;
    s.left = 0;
    s.nlabels = 0;
    s.state = RUNNING;
    run(256, name_step);
    if s.state != DONE {
        return None;
    }
    Some(s.i as usize & MASK)
}

/// One suffix of the question name (the `k`-th from the right).
extern "C" fn pattern_step(k: u64, _: *mut c_void) -> i64 {
    let Some(s) = scratch() else { return 1 };
    let nl = s.nlabels as u64;
    if k >= nl {
        return 1;
    }
    let j = nl - 1 - k;
    let key1 = global(&DNS_KEY1);
    s.acc = dns_suffix(s.acc, s.labels[j as usize & LMASK], key1);
    let kind = if j == 0 { PAT_EXACT } else { PAT_WILD };
    s.pk = PatKey { hash: s.acc, kind, _pad: 0 };
    if let Some(v) = unsafe { DNS_PATTERNS.get(&s.pk) } {
        if v.first_rule < s.first_rule {
            s.first_rule = v.first_rule;
            s.first_action = v.first_action;
        }
        let p = s.npats as usize;
        if p < DNS_MAX_NAME_PATTERNS {
            s.pats[p & (DNS_MAX_NAME_PATTERNS - 1)] = v.id;
            s.npats += 1;
        }
    }
    0
}

/// Matches the question's suffixes against the patterns: fills `s.pats`,
/// `s.npats`, `s.first_rule`/`first_action`; returns the whole name's hash.
#[inline(always)]
fn match_patterns(s: &mut Scratch) -> u64 {
    s.acc = global(&DNS_KEY1);
    s.npats = 0;
    s.first_rule = u32::MAX;
    s.first_action = ACTION_ALLOW;
    run(DNS_MAX_LABELS as u32, pattern_step);
    s.acc
}

/// A DNS query leaving (UDP or TCP, destination port 53). Returns `slot << 32 |
/// action` when the first rule naming its question denies (or audits) it, and
/// u64::MAX when the query is classified like any other packet.
#[inline(never)]
pub fn query<C: Frame>(ctx: &C, pkt: &Packet) -> u64 {
    let Some(s) = scratch() else { return u64::MAX };
    if !matches!(load_msg(ctx, pkt, s), Msg::Loaded(_)) {
        return u64::MAX;
    }
    let n = s.n as usize;
    // A query: QR clear, one question.
    if s.buf[2] & 0x80 != 0 || be16(s, 4) != 1 {
        return u64::MAX;
    }
    let Some(end) = question_name(s) else { return u64::MAX };
    if end + 4 > n {
        return u64::MAX;
    }
    let name = match_patterns(s);
    if s.npats == 0 {
        return u64::MAX;
    }
    if s.first_action != ACTION_ALLOW {
        // Reported by the caller ([`reported`]): a call from here would stack
        // this frame and the event's (BPF's 512 bytes along a chain of calls).
        bump(DS_QUERIES_DENIED);
        if s.first_action == ACTION_DENY {
            return (s.first_rule as u64) << 32 | s.first_action as u64;
        }
    }
    s.rk = ResolverKey { addr: pkt.dst, v6: pkt.v6 as u32 };
    if unsafe { DNS_RESOLVERS.get(&s.rk) }.is_some() {
        s.qk = QueryKey { client: pkt.src, resolver: pkt.dst, client_port: pkt.sport, id: [s.buf[0], s.buf[1]], v6: pkt.v6 as u32 };
        s.qv = QueryValue { question: dns_question(name, be16(s, end), be16(s, end + 2)), sent: now() };
        if DNS_QUERIES.insert(&s.qk, &s.qv, 0).is_ok() {
            bump(DS_QUERIES);
        }
    }
    if s.first_action != ACTION_ALLOW { (s.first_rule as u64) << 32 | s.first_action as u64 } else { u64::MAX }
}

/// Reports the query [`query`] just denied (or audited), with its name.
#[inline(never)]
pub fn reported<C: Frame>(ctx: &C, pkt: &Packet, slot: u32, action: u32) {
    if let Some(s) = scratch() {
        crate::events::denied_dns(ctx, pkt, slot, action, &s.name);
    }
}

/// One step of the answer walk: a label of an owner name (skipped, never
/// followed), or a record's fixed part and data.
extern "C" fn record_step(_: u64, _: *mut c_void) -> i64 {
    let Some(s) = scratch() else { return 1 };
    if s.rr >= s.count {
        s.state = DONE;
        return 1;
    }
    let (i, n) = (s.i as usize & (2 * DNS_BUF - 1), s.n as usize);
    if i >= n {
        s.state = BAD;
        return 1;
    }
    if s.in_name != 0 {
        let b = s.buf[i & MASK];
        if b == 0 {
            s.i += 1;
            s.in_name = 0;
        } else if b & 0xc0 == 0xc0 {
            s.i += 2;
            s.in_name = 0;
        } else if b < 64 {
            s.i += 1 + b as u64;
        } else {
            s.state = BAD;
            return 1;
        }
        return 0;
    }
    if i + 10 > n {
        s.state = BAD;
        return 1;
    }
    let (ty, class) = (be16(s, i), be16(s, i + 2));
    let ttl = u32::from_be_bytes([s.buf[(i + 4) & MASK], s.buf[(i + 5) & MASK], s.buf[(i + 6) & MASK], s.buf[(i + 7) & MASK]]);
    let rdlen = be16(s, i + 8) as usize;
    let rd = i + 10;
    if rd + rdlen > n {
        s.state = BAD;
        return 1;
    }
    let len = match (ty, rdlen) {
        (TYPE_A, 4) => 4,
        (TYPE_AAAA, 16) => 16,
        _ => 0,
    };
    let r = s.nrec as usize;
    if class == CLASS_IN && len != 0 && r < DNS_MAX_RECORDS {
        let r = r & (DNS_MAX_RECORDS - 1);
        for k in 0..16 {
            s.addrs[r][k] = if k < len { s.buf[(rd + k) & MASK] } else { 0 };
        }
        s.ttls[r] = ttl;
        s.v6[r] = (len == 16) as u8;
        s.nrec += 1;
    }
    s.i = (rd + rdlen) as u64;
    s.rr += 1;
    s.in_name = 1;
    0
}

/// Walks the answer section from `start`: collects up to `DNS_MAX_RECORDS`
/// A/AAAA records into `s.addrs` (`s.nrec`). False: malformed.
#[inline(always)]
fn records(s: &mut Scratch, start: usize, count: u16) -> bool {
    s.i = start as u64;
    s.rr = 0;
    s.count = count as u32;
    s.in_name = 1;
    s.nrec = 0;
    s.state = RUNNING;
    run(ANSWER_STEPS, record_step);
    s.state == DONE
}

/// An answer coming back (UDP or TCP, source port 53), seen by the companion program
/// before it is handed on: learns what it may (see the module comment).
#[inline(never)]
pub fn answer<C: Frame>(ctx: &C, pkt: &Packet) {
    let Some(s) = scratch() else { return };
    // First the message (a TCP segment without data is nobody's answer).
    let msg = load_msg(ctx, pkt, s);
    if msg == Msg::Empty {
        return;
    }
    s.rk = ResolverKey { addr: pkt.src, v6: pkt.v6 as u32 };
    if unsafe { DNS_RESOLVERS.get(&s.rk) }.is_none() {
        bump(DS_NOT_RESOLVER);
        return;
    }
    let Msg::Loaded(longer) = msg else {
        bump(DS_MALFORMED);
        return;
    };
    let n = s.n as usize;
    // A response (QR), not truncated (TC), a standard query (opcode 0), one question.
    let flags = be16(s, 2);
    if longer || flags & 0x8000 == 0 || flags & 0x0200 != 0 || flags & 0x7800 != 0 || be16(s, 4) != 1 {
        bump(DS_MALFORMED);
        return;
    }
    let Some(end) = question_name(s) else {
        bump(DS_MALFORMED);
        return;
    };
    if end + 4 > n {
        bump(DS_MALFORMED);
        return;
    }
    let name = match_patterns(s);
    if s.npats == 0 {
        // Nothing to learn for this name: not a rule's business.
        return;
    }
    s.qk = QueryKey { client: pkt.dst, resolver: pkt.src, client_port: pkt.port, id: [s.buf[0], s.buf[1]], v6: pkt.v6 as u32 };
    let q = dns_question(name, be16(s, end), be16(s, end + 2));
    let t = now();
    match unsafe { DNS_QUERIES.get(&s.qk) } {
        Some(v) if v.question == q && t.wrapping_sub(v.sent) <= DNS_QUERY_TIMEOUT_NS => {}
        _ => {
            bump(DS_NO_QUERY);
            return;
        }
    }
    // One answer per query: a second (spoofed or replayed) finds nothing.
    let _ = DNS_QUERIES.remove(&s.qk);
    if flags & 0x000f != 0 {
        // An error (NXDOMAIN, SERVFAIL...): nothing to learn.
        return;
    }
    if !records(s, end + 4, be16(s, 6)) {
        bump(DS_MALFORMED);
        return;
    }
    s.now = t;
    s.name_hash = name;
    s.taught = 0;
    run((DNS_MAX_RECORDS * DNS_MAX_NAME_PATTERNS) as u32, learn_step);
    if s.taught != 0 {
        let _ = DNS_NAMES.insert(&name, &s.name, 0);
        bump(DS_ANSWERS);
    }
}

/// Learns record `k / DNS_MAX_NAME_PATTERNS` for pattern `k % DNS_MAX_NAME_PATTERNS`.
extern "C" fn learn_step(k: u64, _: *mut c_void) -> i64 {
    let Some(s) = scratch() else { return 1 };
    let (r, p) = (k as usize / DNS_MAX_NAME_PATTERNS, k as usize % DNS_MAX_NAME_PATTERNS);
    if r >= s.nrec as usize {
        return 1;
    }
    if p >= s.npats as usize {
        return 0;
    }
    let (r, p) = (r & (DNS_MAX_RECORDS - 1), p & (DNS_MAX_NAME_PATTERNS - 1));
    let ttl = (s.ttls[r] as u64).clamp(global(&DNS_MIN_TTL), global(&DNS_MAX_TTL));
    let expires = s.now + ttl * 1_000_000_000;
    let (v6, pattern, name, t) = (s.v6[r] != 0, s.pats[p], s.name_hash, s.now);
    // The address stays in the scratch memory (BPF's stack is small).
    let addr: &[u8; 16] = unsafe { &*core::ptr::addr_of!(s.addrs[r]) };
    if learn(addr, v6, expires, pattern, name, t) {
        s.taught += 1;
    }
    0
}

/// Two addresses are equal: two word compares, in place (no copies, no bcmp call).
#[inline(always)]
fn same(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let w = |x: &[u8; 16], i: usize| unsafe { core::ptr::read_unaligned(x.as_ptr().add(i).cast::<u64>()) };
    w(a, 0) == w(b, 0) && w(a, 8) == w(b, 8)
}

/// Stores (address, pattern) until `expires`; true if stored.
#[inline(always)]
fn learn(addr: &[u8; 16], v6: bool, expires: u64, pattern: u64, name: u64, t: u64) -> bool {
    let slot = learn_bucket(addr) & global(&DNS_BUCKET_MASK);
    let b = if v6 { DNS_LEARN_V6.get_ptr_mut(slot) } else { DNS_LEARN_V4.get_ptr_mut(slot) };
    let Some(b) = b else { return false };
    let b: &mut LearnBucket = unsafe { &mut *b };
    // The way to write: the same pair, else a free or dead way, else the live
    // way nearest to expiry.
    let mut pick = DNS_WAYS;
    let mut free = DNS_WAYS;
    let mut nearest = 0;
    let mut nearest_at = u64::MAX;
    for w in 0..DNS_WAYS {
        let x: &LearnWay = &b.ways[w];
        let valid = x.expires != 0 && x.seal == learn_seal(&x.addr, x.expires, x.pattern, x.name);
        if valid && same(&x.addr, addr) && x.pattern == pattern {
            pick = w;
            break;
        }
        if !valid || x.expires <= t {
            if free == DNS_WAYS {
                free = w;
            }
        } else if x.expires < nearest_at {
            nearest_at = x.expires;
            nearest = w;
        }
    }
    // A pair that was not live: verdicts cached for this bucket go stale.
    let mut fresh = true;
    if pick != DNS_WAYS {
        let old = b.ways[pick & (DNS_WAYS - 1)].expires;
        fresh = old <= t;
        bump(if fresh { DS_LEARNED } else { DS_REFRESHED });
        if old > expires {
            return true;
        }
    } else if free != DNS_WAYS {
        pick = free;
        bump(DS_LEARNED);
    } else if nearest_at < expires {
        pick = nearest;
        bump(DS_EVICTED);
        bump(DS_LEARNED);
    } else {
        bump(DS_TABLE_FULL);
        return false;
    }
    let w = &mut b.ways[pick & (DNS_WAYS - 1)];
    w.addr = *addr;
    w.expires = expires;
    w.pattern = pattern;
    w.name = name;
    w.seal = learn_seal(addr, expires, pattern, name);
    if fresh {
        // After the way: a lookup that reads the new epoch sees the new way.
        // Not a count: two CPUs learning at once would both write the same
        // next value. The time in ns and the CPU's number never repeat.
        b.epoch = unsafe { bpf_ktime_get_ns() ^ (u64::from(bpf_get_smp_processor_id()) << 56) };
    }
    true
}

/// Step 0: could any rule by name match this packet (its source, protocol
/// and port)? Class id 0 holds every such rule; if none, nothing learned can
/// matter. Steps 1..=`DNS_WAYS`: a way of the destination's bucket; a live
/// entry for it makes its pattern's rules candidates.
extern "C" fn class_step(k: u64, pkt: *mut c_void) -> i64 {
    let Some(s) = scratch() else { return 1 };
    let pkt = unsafe { &*(pkt as *const Packet) };
    if k == 0 {
        // The key in map memory: a constant's address may be a merged .rodata
        // section's, which the loader does not relocate to the value written.
        s.zero = 0;
        let Some(any) = (unsafe { DNS_CLASSES.get(&s.zero) }) else { return 1 };
        let v = classify::from_dst(if pkt.v6 { &any.v6 } else { &any.v4 }, pkt);
        s.any_rule = v.rule;
        return if v.rule == classify::NONE.rule { 1 } else { 0 };
    }
    let b = if pkt.v6 { DNS_LEARN_V6.get_ptr(s.cur) } else { DNS_LEARN_V4.get_ptr(s.cur) };
    let Some(b) = b else { return 1 };
    let x: &LearnWay = unsafe { &(*b).ways[(k as usize - 1) & (DNS_WAYS - 1)] };
    if x.expires <= s.now || !same(&x.addr, &pkt.dst) || x.seal != learn_seal(&x.addr, x.expires, x.pattern, x.name) {
        return 0;
    }
    if x.expires < s.deadline {
        s.deadline = x.expires;
    }
    // The pattern id as the key, from map memory (not the stack).
    let Some(c) = (unsafe { DNS_CLASSES.get(&x.pattern) }) else { return 0 };
    let v = classify::from_dst(if pkt.v6 { &c.v6 } else { &c.v4 }, pkt);
    if v.rule < s.best.rule {
        s.best = v;
    }
    0
}

/// The rules by name for the packet, before the address lookup (so that the
/// verifier checks this once, not once for each of that lookup's outcomes):
/// the first rule of a pattern its destination is learned for, and the first
/// rule by name that could match it if learned. [`combine`] reads them.
#[inline(never)]
pub fn learned(pkt: &Packet) {
    let Some(s) = scratch() else { return };
    s.best = classify::NONE;
    s.any_rule = u32::MAX;
    s.cur = learn_bucket(&pkt.dst) & global(&DNS_BUCKET_MASK);
    s.now = now();
    s.deadline = s.now + HOLD_NS;
    s.epoch = epoch(pkt.v6, s.cur).unwrap_or(0);
    unsafe { bpf_loop(DNS_WAYS as u32 + 1, class_step as *mut c_void, pkt as *const Packet as *mut c_void, 0) };
}

/// How long a verdict that depends on learned names is cached at most when
/// nothing is learned for its destination (the bucket's epoch guards it).
const HOLD_NS: u64 = 64_000_000_000;

/// The epoch of a learned bucket (read before its ways).
#[inline(always)]
fn epoch(v6: bool, slot: u32) -> Option<u64> {
    let b = if v6 { DNS_LEARN_V6.get_ptr(slot) } else { DNS_LEARN_V4.get_ptr(slot) }?;
    Some(unsafe { core::ptr::read_volatile(&(*b).epoch) })
}

/// The deadline and seal tag of the verdict [`learned`] and [`combine`] just
/// produced, for the flow cache.
#[inline(always)]
pub fn cache_terms() -> (u32, u32) {
    let Some(s) = scratch() else { return (0, 0) };
    let deadline = (s.deadline >> FLOW_DEADLINE_SHIFT) as u32;
    (deadline, flow_learned_tag(s.epoch, deadline))
}

/// A cached learned-name verdict's seal tag, if it is still good: before its
/// deadline, under the epoch its destination's bucket has now.
#[inline(always)]
pub fn cache_tag(pkt: &Packet, deadline: u32) -> Option<u32> {
    if !on() {
        return None;
    }
    let t = (now() >> FLOW_DEADLINE_SHIFT) as u32;
    if deadline.wrapping_sub(t) as i32 <= 0 {
        return None;
    }
    let e = epoch(pkt.v6, learn_bucket(&pkt.dst) & global(&DNS_BUCKET_MASK))?;
    Some(flow_learned_tag(e, deadline))
}

/// The verdict with the rules by name: the earlier of `addr` (the address
/// rules' answer; rule u32::MAX for none) and what [`learned`] found, and
/// whether it depends on what is learned (then it is cached with a deadline
/// and its bucket's epoch, [`cache_terms`]: learning or expiry would change it).
#[inline(always)]
pub fn combine(addr: Verdict) -> (Verdict, bool) {
    let Some(s) = scratch() else { return (addr, false) };
    let (best, any) = unsafe { (core::ptr::read_volatile(&s.best), core::ptr::read_volatile(&s.any_rule)) };
    (if best.rule < addr.rule { best } else { addr }, any < addr.rule)
}
