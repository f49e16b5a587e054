//! The kinds of packet the classifier runs on: a socket buffer (TC hooks,
//! egress and ingress; a cgroup's egress, where it starts at the IP header) and
//! an XDP frame. Parsing, classification and counting are written once against
//! [`Frame`]; only byte access and length differ. A socket call (a cgroup's
//! connect and sendmsg hooks) is a frame with no bytes: it is classified from
//! the call's addresses, never parsed.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{SkBuffContext, SockAddrContext, TcContext, XdpContext},
};

use crate::maps::{DNS_TAIL_CG, DNS_TAIL_TC, DNS_TAIL_XDP};

pub trait Frame {
    /// Start and end of the linear data (direct packet access).
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Copies `size_of::<T>()` bytes at `off`, wherever they sit (linear or paged);
    /// `Err` when the packet is shorter.
    fn load<T>(&self, off: usize) -> Result<T, ()>;
    /// Copies `len` bytes at `off` to `dst` (1..=`cap` bytes; the caller
    /// bounds `len` so that the verifier sees it): false when the packet is shorter.
    fn load_into(&self, off: usize, dst: *mut u8, len: u32) -> bool;
    /// Wire packets this frame stands for (a GSO packet: its segments).
    fn packets(&self) -> u64;
    /// Bytes as seen at the hook, L2 header included.
    fn bytes(&self) -> u64;
    /// Hands the packet on to the split program of its program type (a tail
    /// call: no return when it succeeds).
    fn split(&self);
}

/// The socket-buffer frames, TC's and cgroup_skb's: the same `SkBuff`
/// underneath; only where a packet is handed on for the rules by name differs.
macro_rules! skb_frame {
    ($ctx:ty, $split:expr) => {
        impl Frame for $ctx {
            #[inline(always)]
            fn data(&self) -> usize {
                unsafe { (*self.skb.skb).data as usize }
            }
            #[inline(always)]
            fn data_end(&self) -> usize {
                unsafe { (*self.skb.skb).data_end as usize }
            }
            #[inline(always)]
            fn load<T>(&self, off: usize) -> Result<T, ()> {
                self.skb.load::<T>(off).map_err(|_| ())
            }
            #[inline(always)]
            fn load_into(&self, off: usize, dst: *mut u8, len: u32) -> bool {
                // SAFETY: the helper writes at most `len` bytes into `dst`, which the caller sized.
                unsafe { bpf_skb_load_bytes(self.as_ptr().cast(), off as u32, dst.cast(), len) == 0 }
            }
            #[inline(always)]
            fn packets(&self) -> u64 {
                let segs = unsafe { (*self.skb.skb).gso_segs };
                if segs > 1 { segs as u64 } else { 1 }
            }
            #[inline(always)]
            fn bytes(&self) -> u64 {
                self.skb.len() as u64
            }
            #[inline(always)]
            fn split(&self) {
                $split(self)
            }
        }
    };
}

// SAFETY (the tail call): the split program is a TC program over the same maps.
skb_frame!(TcContext, |c: &TcContext| unsafe { DNS_TAIL_TC.tail_call(c, 0) });
// SAFETY: the split program is a cgroup_skb (egress) program over the same maps.
skb_frame!(SkBuffContext, |c: &SkBuffContext| unsafe { DNS_TAIL_CG.tail_call(c, 0) });

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn load<T>(&self, off: usize) -> Result<T, ()> {
        let mut v = core::mem::MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes exactly size_of::<T>() bytes into `v` or fails.
        let rc = unsafe { bpf_xdp_load_bytes(self.as_ptr().cast(), off as u32, v.as_mut_ptr().cast(), core::mem::size_of::<T>() as u32) };
        if rc < 0 { Err(()) } else { Ok(unsafe { v.assume_init() }) }
    }
    #[inline(always)]
    fn load_into(&self, off: usize, dst: *mut u8, len: u32) -> bool {
        // SAFETY: as for the TC frame.
        unsafe { bpf_xdp_load_bytes(self.as_ptr().cast(), off as u32, dst.cast(), len) == 0 }
    }
    #[inline(always)]
    fn packets(&self) -> u64 {
        1
    }
    #[inline(always)]
    fn bytes(&self) -> u64 {
        (self.data_end() - self.data()) as u64
    }
    #[inline(always)]
    fn split(&self) {
        // SAFETY: as for the TC frame.
        unsafe { DNS_TAIL_XDP.tail_call(self, 0) }
    }
}

impl Frame for SockAddrContext {
    #[inline(always)]
    fn data(&self) -> usize {
        0
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        0
    }
    #[inline(always)]
    fn load<T>(&self, _off: usize) -> Result<T, ()> {
        Err(())
    }
    #[inline(always)]
    fn load_into(&self, _off: usize, _dst: *mut u8, _len: u32) -> bool {
        false
    }
    /// A refused call counts as one packet of no bytes on its rule.
    #[inline(always)]
    fn packets(&self) -> u64 {
        1
    }
    #[inline(always)]
    fn bytes(&self) -> u64 {
        0
    }
    #[inline(always)]
    fn split(&self) {}
}
