//! The architecture a process runs, or an ELF object is built for: its ELF class and machine,
//! as the first bytes of the file say (`e_ident[EI_CLASS]`, `e_machine`).
//!
//! On an x86-64 kernel a process runs either as x86-64 (ELF64, `EM_X86_64`) or in the
//! kernel's 32-bit compatibility mode (ELF32, `EM_386`): the kernel chooses by the class of
//! the executable it loads, and the process keeps it until its next `execve`. ELF32 with
//! `EM_X86_64` is the x32 ABI. A module must be built for the architecture of the process it
//! goes into.

use std::fmt;
use std::os::unix::fs::FileExt;

const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;

/// The ELF class and machine of a process or an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// ELF64, `EM_X86_64`.
    X86_64,
    /// ELF32, `EM_386`: a 32-bit x86 process under the kernel's compatibility mode.
    I386,
    /// Anything else: another machine, x32 (ELF32 with `EM_X86_64`), big-endian.
    Other { class: u8, machine: u16, little_endian: bool },
}

impl Arch {
    /// Bytes of an ELF header needed to tell its architecture.
    pub const HEADER_LEN: usize = 20;

    /// The architecture of the ELF header at the start of `head`; `None` when it is no ELF
    /// header (too short, no magic).
    pub fn of_header(head: &[u8]) -> Option<Arch> {
        if head.len() < Self::HEADER_LEN || &head[..4] != b"\x7fELF" {
            return None;
        }
        let (class, data) = (head[EI_CLASS], head[EI_DATA]);
        let little_endian = data == ELFDATA2LSB;
        let m = [head[18], head[19]];
        let machine = if little_endian { u16::from_le_bytes(m) } else { u16::from_be_bytes(m) };
        Some(match (class, little_endian, machine) {
            (ELFCLASS64, true, EM_X86_64) => Arch::X86_64,
            (ELFCLASS32, true, EM_386) => Arch::I386,
            _ => Arch::Other { class, machine, little_endian },
        })
    }

    /// The architecture of the ELF file `file`, from its header.
    pub fn of_file(file: &std::fs::File) -> Option<Arch> {
        let mut head = [0u8; Self::HEADER_LEN];
        file.read_exact_at(&mut head, 0).ok()?;
        Arch::of_header(&head)
    }

    /// The architecture process `pid` runs: that of the executable the kernel loaded for it
    /// (`/proc/PID/exe`, the file it runs even when replaced or deleted on disk). `None` when
    /// it cannot be read (a kernel thread, a zombie, no permission).
    pub fn of_process(pid: i32) -> Option<Arch> {
        std::fs::File::open(format!("/proc/{pid}/exe")).ok().as_ref().and_then(Arch::of_file)
    }

    /// The word size, in bytes, of a process of this architecture (its addresses, its stack
    /// slots).
    pub fn word(self) -> u64 {
        match self {
            Arch::I386 => 4,
            Arch::Other { class: ELFCLASS32, .. } => 4,
            _ => 8,
        }
    }

    /// `ELF64`, `ELF32`, or the class byte when it is neither.
    pub fn class_name(self) -> String {
        match self {
            Arch::X86_64 => "ELF64".into(),
            Arch::I386 => "ELF32".into(),
            Arch::Other { class: ELFCLASS32, .. } => "ELF32".into(),
            Arch::Other { class: ELFCLASS64, .. } => "ELF64".into(),
            Arch::Other { class, .. } => format!("ELF class {class}"),
        }
    }

    /// The short name `ps` and the console show: `x86-64`, `i386`, `x32`, or the machine.
    pub fn name(self) -> String {
        match self {
            Arch::X86_64 => "x86-64".into(),
            Arch::I386 => "i386".into(),
            Arch::Other { class: ELFCLASS32, machine: EM_X86_64, little_endian: true } => "x32".into(),
            Arch::Other { machine, little_endian, .. } => {
                let m = machine_name(machine).map_or_else(|| format!("machine {machine}"), str::to_string);
                if little_endian {
                    m
                } else {
                    format!("{m} big-endian")
                }
            }
        }
    }
}

/// `ELF64 x86-64`, `ELF32 i386`: the class and machine, as messages name them.
impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.class_name(), self.name())
    }
}

fn machine_name(machine: u16) -> Option<&'static str> {
    Some(match machine {
        EM_386 => "i386",
        EM_X86_64 => "x86-64",
        40 => "ARM",
        183 => "AArch64",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC64",
        22 => "S/390",
        243 => "RISC-V",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(class: u8, data: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[EI_CLASS] = class;
        h[EI_DATA] = data;
        let m = if data == ELFDATA2LSB { machine.to_le_bytes() } else { machine.to_be_bytes() };
        h[18..20].copy_from_slice(&m);
        h
    }

    #[test]
    fn classes_and_machines() {
        assert_eq!(Arch::of_header(&header(2, 1, 62)), Some(Arch::X86_64));
        assert_eq!(Arch::of_header(&header(1, 1, 3)), Some(Arch::I386));
        let x32 = Arch::of_header(&header(1, 1, 62)).unwrap();
        assert_eq!((x32.to_string(), x32.word()), ("ELF32 x32".to_string(), 4));
        assert_eq!(Arch::of_header(&header(2, 1, 183)).unwrap().to_string(), "ELF64 AArch64");
        assert_eq!(Arch::of_header(&header(2, 2, 21)).unwrap().to_string(), "ELF64 PowerPC64 big-endian");
        assert_eq!(Arch::of_header(&header(9, 1, 999)).unwrap().to_string(), "ELF class 9 machine 999");
        assert_eq!(Arch::X86_64.to_string(), "ELF64 x86-64");
        assert_eq!(Arch::I386.to_string(), "ELF32 i386");
        assert_eq!((Arch::X86_64.word(), Arch::I386.word()), (8, 4));
    }

    #[test]
    fn no_elf_no_arch() {
        assert_eq!(Arch::of_header(b""), None);
        assert_eq!(Arch::of_header(&[0u8; 64]), None);
        assert_eq!(Arch::of_header(&header(2, 1, 62)[..19]), None);
    }

    #[test]
    fn this_process_runs_x86_64() {
        assert_eq!(Arch::of_process(std::process::id() as i32), Some(Arch::X86_64));
        assert_eq!(Arch::of_process(-1), None);
    }
}
