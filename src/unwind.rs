//! Backtraces of the target's stopped threads: DWARF CFI from each loaded object's `.eh_frame`
//! (framehop over gimli), frame pointers where there is none, and function names from the
//! objects' symbol tables. A stack that cannot be unwound to its end says so, and so does one
//! with a frame in code no unwinding table describes (anonymous code such as a JIT's, an object
//! that could not be read): what lies below such a frame was guessed from frame pointers. The
//! `function` consistency rule treats "unknown" as busy, never as safe.

use crate::target::{Loaded, Target};
use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _};
use pannus_kernel::Mem;

/// Deepest backtrace taken.
const MAX_FRAMES: usize = 256;

/// A thread's call stack: the instruction pointer, then return addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backtrace {
    pub frames: Vec<u64>,
    /// Whether unwinding reached the end of the stack; `false` means the frames are a prefix and
    /// what lies beyond is unknown.
    pub complete: bool,
}

impl Backtrace {
    /// The addresses that identify the code of each frame: the instruction pointer itself, and
    /// for a return address the byte before it (the call instruction), so that a call at the very
    /// end of a function is attributed to it.
    pub fn code_addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.frames.iter().enumerate().map(|(i, &a)| if i == 0 { a } else { a.wrapping_sub(1) })
    }
}

pub struct Unwinder {
    inner: UnwinderX86_64<Vec<u8>>,
    cache: CacheX86_64,
    objects: Vec<Loaded>,
    /// The address ranges whose code an unwinding table (`.eh_frame`) describes.
    described: Vec<std::ops::Range<u64>>,
    /// A 32-bit process: unwound by `unwind386.rs` (framehop has no i386 unwinder).
    i386: bool,
}

impl Unwinder {
    /// An unwinder over every object the process maps (its executable, libraries, and the patch
    /// modules pannus loaded).
    pub fn new(target: &mut Target) -> Unwinder {
        let mut objects = target.loaded_objects();
        objects.extend(target.vdso());
        let mut inner = UnwinderX86_64::new();
        let i386 = target.arch == Some(pannus_kernel::Arch::I386);
        let mut described = Vec::new();
        for o in &objects {
            let obj = &o.object;
            let sect = |n: &str| obj.section(n).map(|(r, b)| (r, b.to_vec()));
            // Unwinding tables only: no code bytes (reading a library's whole text to guess at
            // prologues costs milliseconds, and `.eh_frame` describes every instruction).
            let eh = sect(".eh_frame");
            if eh.as_ref().is_some_and(|(_, b)| !b.is_empty()) {
                described.push(o.lo..o.hi);
            }
            if i386 {
                continue;
            }
            let hdr = sect(".eh_frame_hdr");
            let got = obj.section(".got").map(|(r, _)| r);
            let info = ExplicitModuleSectionInfo {
                base_svma: 0,
                got_svma: got,
                eh_frame_svma: eh.as_ref().map(|t| t.0.clone()),
                eh_frame: eh.map(|t| t.1),
                eh_frame_hdr_svma: hdr.as_ref().map(|t| t.0.clone()),
                eh_frame_hdr: hdr.map(|t| t.1),
                ..Default::default()
            };
            inner.add_module(Module::new(o.mapped_path.clone(), o.lo..o.hi, o.bias, info));
        }
        Unwinder { inner, cache: CacheX86_64::new(), objects, described, i386 }
    }

    /// Unwinds a stopped thread. `stack` holds the memory from `rsp` up, read beforehand; other
    /// addresses are read from the process.
    pub fn backtrace(&mut self, mem: &Mem, rip: u64, rsp: u64, rbp: u64, stack: &[u8]) -> Backtrace {
        if self.i386 {
            let mut bt = crate::unwind386::backtrace(&self.objects, mem, rip, rsp, rbp, stack);
            let described = bt.code_addresses().all(|a| self.described.iter().any(|r| r.contains(&a)));
            bt.complete &= described;
            return bt;
        }
        let mut read = |addr: u64| -> Result<u64, ()> {
            if addr >= rsp {
                let off = (addr - rsp) as usize;
                if let Some(b) = stack.get(off..off + 8) {
                    return Ok(u64::from_le_bytes(b.try_into().map_err(|_| ())?));
                }
            }
            mem.read_u64(addr).map_err(|_| ())
        };
        let mut frames = Vec::new();
        let mut it = self.inner.iter_frames(rip, UnwindRegsX86_64::new(rip, rsp, rbp), &mut self.cache, &mut read);
        let reached_the_end = loop {
            match it.next() {
                Ok(Some(FrameAddress::InstructionPointer(a))) => frames.push(a),
                Ok(Some(FrameAddress::ReturnAddress(a))) => frames.push(a.get()),
                Ok(None) => break true,
                Err(_) => break false,
            }
            if frames.len() >= MAX_FRAMES {
                break false;
            }
        };
        let mut bt = Backtrace { frames, complete: reached_the_end };
        // Past a frame in undescribed code the unwinder guessed from frame pointers.
        let described = bt.code_addresses().all(|a| self.described.iter().any(|r| r.contains(&a)));
        bt.complete &= described;
        bt
    }

    /// The function holding `addr` and the file name of its object, when known.
    pub fn symbol(&self, addr: u64) -> (Option<&str>, Option<&str>) {
        match self.objects.iter().find(|o| addr >= o.lo && addr < o.hi) {
            Some(o) => {
                let file = o.mapped_path.rsplit('/').next().unwrap_or(&o.mapped_path);
                (o.object.function_at(addr.wrapping_sub(o.bias)).map(|(f, _)| f), Some(file))
            }
            None => (None, None),
        }
    }

    /// `function+0xoff (object)` for an address, or the bare address.
    pub fn name(&self, addr: u64) -> String {
        for o in &self.objects {
            if addr >= o.lo && addr < o.hi {
                let file = o.mapped_path.rsplit('/').next().unwrap_or(&o.mapped_path);
                return match o.object.function_at(addr.wrapping_sub(o.bias)) {
                    Some((f, off)) => format!("{f}+{off:#x} ({file})"),
                    None => format!("{addr:#x} ({file})"),
                };
            }
        }
        format!("{addr:#x}")
    }

    /// The backtrace as lines `#N address name`, with a last line when it is incomplete.
    pub fn describe(&self, bt: &Backtrace) -> Vec<String> {
        let mut out: Vec<String> = bt
            .frames
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let code = if i == 0 { a } else { a.wrapping_sub(1) };
                format!("#{i:<2} {a:#014x} {}", self.name(code))
            })
            .collect();
        if !bt.complete {
            out.push("   (the stack could not be unwound further)".into());
        }
        out
    }
}
