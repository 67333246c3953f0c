//! The operations of the reference model, their random generation, and the
//! parser that replays a sequence from the text a failure prints.

use proptest::prelude::*;

use crate::fs::Caller;

pub(super) const NAMES: [&str; 3] = ["a", "b", "c"];
pub(super) const SLOTS: usize = 3;
pub(super) const ME: Caller = Caller { uid: 0, gid: 0 };

/// Every path the operations name: up to three levels of `a`, `b`, `c`.
pub(super) fn universe() -> Vec<String> {
    let mut out = Vec::new();
    for a in NAMES {
        out.push(a.to_string());
        for b in NAMES {
            out.push(format!("{a}/{b}"));
            for c in NAMES {
                out.push(format!("{a}/{b}/{c}"));
            }
        }
    }
    out
}

/// A path, chosen against the model's tree when the step runs (so that a
/// shrunk sequence still names paths that exist).
#[derive(Debug, Clone, Copy)]
pub(crate) enum P {
    /// The n-th existing path (any path when there is none).
    Existing(u16),
    /// A name (`a`, `b` or `c`, which may exist) in the n-th existing directory.
    In(u16, u8),
    /// Any path of [`universe`], mostly missing.
    Any(u8),
}

/// One operation.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Mkdir(P),
    /// open(O_CREAT|O_TRUNC), write `len` bytes, close.
    Create(P, Len),
    /// Opens an existing file read-write into a slot, kept open.
    Open(u8, P),
    Write(u8, Off, Len),
    Close(u8),
    Fsync(u8),
    /// open, write at an offset, close.
    WriteAt(P, Off, Len),
    Truncate(P, Off),
    Rename(P, P),
    Unlink(P),
    Rmdir(P),
    RmRf(P),
    Symlink(P, u8),
    Mkfifo(P),
    Chmod(P, u16),
    SetXattr(P, Option<u8>),
    /// Reads a file (or link, or directory listing) and compares.
    Check(P),
    /// Another client PUTs a new object at a name the actor does not have
    /// (and has nothing queued for): the mount shows it, and renames,
    /// rewrites or deletes it as its own.
    Foreign(P, Len),
    /// Waits until nothing is queued.
    Settle,
    /// The next `n` writes to the bucket fail with a 503.
    Outage(u8),
    /// Drops the core and its runtime (as kill -9 does) and starts again
    /// from the journal. Open files are closed first.
    Restart,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Len {
    Zero,
    Small(u16),
    /// Over the journal's inline limit: staged as a synced cache file.
    Large,
}

impl Len {
    pub(super) fn bytes(self) -> usize {
        match self {
            Len::Zero => 0,
            Len::Small(n) => 1 + n as usize % 3000,
            Len::Large => crate::journal::INLINE_MAX as usize + 4321,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Off {
    Start,
    At(u16),
    Far,
}

impl Off {
    pub(super) fn at(self) -> u64 {
        match self {
            Off::Start => 0,
            Off::At(n) => n as u64 % 5000,
            Off::Far => crate::journal::INLINE_MAX + 100,
        }
    }
}

fn existing() -> impl Strategy<Value = P> {
    prop_oneof![
        6 => any::<u16>().prop_map(P::Existing),
        2 => (any::<u16>(), 0u8..3).prop_map(|(d, n)| P::In(d, n)),
        1 => (0u8..39).prop_map(P::Any),
    ]
}

fn fresh() -> impl Strategy<Value = P> {
    prop_oneof![
        6 => (any::<u16>(), 0u8..3).prop_map(|(d, n)| P::In(d, n)),
        1 => any::<u16>().prop_map(P::Existing),
        1 => (0u8..39).prop_map(P::Any),
    ]
}

fn either() -> impl Strategy<Value = P> {
    prop_oneof![existing(), fresh()]
}

fn len() -> impl Strategy<Value = Len> {
    prop_oneof![
        1 => Just(Len::Zero),
        6 => any::<u16>().prop_map(Len::Small),
        1 => Just(Len::Large),
    ]
}

fn off() -> impl Strategy<Value = Off> {
    prop_oneof![
        3 => Just(Off::Start),
        3 => any::<u16>().prop_map(Off::At),
        1 => Just(Off::Far),
    ]
}

pub(super) fn step() -> impl Strategy<Value = Step> {
    let slot = 0u8..SLOTS as u8;
    prop_oneof![
        6 => fresh().prop_map(Step::Mkdir),
        8 => (fresh(), len()).prop_map(|(p, l)| Step::Create(p, l)),
        3 => (slot.clone(), existing()).prop_map(|(s, p)| Step::Open(s, p)),
        4 => (slot.clone(), off(), len()).prop_map(|(s, o, l)| Step::Write(s, o, l)),
        3 => slot.clone().prop_map(Step::Close),
        1 => slot.prop_map(Step::Fsync),
        3 => (existing(), off(), len()).prop_map(|(p, o, l)| Step::WriteAt(p, o, l)),
        2 => (existing(), off()).prop_map(|(p, o)| Step::Truncate(p, o)),
        8 => (existing(), either()).prop_map(|(a, b)| Step::Rename(a, b)),
        3 => existing().prop_map(Step::Unlink),
        2 => existing().prop_map(Step::Rmdir),
        1 => existing().prop_map(Step::RmRf),
        1 => (fresh(), any::<u8>()).prop_map(|(p, t)| Step::Symlink(p, t)),
        1 => fresh().prop_map(Step::Mkfifo),
        2 => (existing(), any::<u16>()).prop_map(|(p, m)| Step::Chmod(p, m)),
        1 => (existing(), any::<Option<u8>>()).prop_map(|(p, v)| Step::SetXattr(p, v)),
        3 => existing().prop_map(Step::Check),
        2 => (fresh(), len()).prop_map(|(p, l)| Step::Foreign(p, l)),
        1 => Just(Step::Settle),
        1 => (1u8..4).prop_map(Step::Outage),
        1 => Just(Step::Restart),
    ]
}

// ----- replaying a logged sequence -----

/// A parsed `Name(arg, …)` or number, as `{:?}` prints steps.
#[derive(Debug)]
enum Term {
    Num(u64),
    App(String, Vec<Term>),
}

fn parse_terms(text: &str) -> Vec<Term> {
    fn term(s: &mut std::iter::Peekable<std::str::Chars>) -> Option<Term> {
        while s.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            s.next();
        }
        let first = *s.peek()?;
        if first.is_ascii_digit() {
            let mut n = 0u64;
            while let Some(d) = s.peek().and_then(|c| c.to_digit(10)) {
                n = n * 10 + d as u64;
                s.next();
            }
            return Some(Term::Num(n));
        }
        let mut name = String::new();
        while s.peek().is_some_and(|c| c.is_alphanumeric()) {
            name.push(s.next().unwrap());
        }
        let mut args = Vec::new();
        if s.peek() == Some(&'(') {
            s.next();
            loop {
                while s.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
                    s.next();
                }
                if s.peek() == Some(&')') {
                    s.next();
                    break;
                }
                args.push(term(s)?);
            }
        }
        Some(Term::App(name, args))
    }
    let mut chars = text.chars().peekable();
    let mut out = Vec::new();
    while let Some(t) = term(&mut chars) {
        out.push(t);
    }
    out
}

impl Term {
    fn num(&self) -> u64 {
        match self {
            Term::Num(n) => *n,
            t => panic!("not a number: {t:?}"),
        }
    }
    fn app(&self) -> (&str, &[Term]) {
        match self {
            Term::App(n, a) => (n, a),
            t => panic!("not a term: {t:?}"),
        }
    }
    fn p(&self) -> P {
        match self.app() {
            ("Existing", [n]) => P::Existing(n.num() as u16),
            ("In", [d, n]) => P::In(d.num() as u16, n.num() as u8),
            ("Any", [n]) => P::Any(n.num() as u8),
            t => panic!("not a path: {t:?}"),
        }
    }
    fn len(&self) -> Len {
        match self.app() {
            ("Zero", []) => Len::Zero,
            ("Small", [n]) => Len::Small(n.num() as u16),
            ("Large", []) => Len::Large,
            t => panic!("not a length: {t:?}"),
        }
    }
    fn off(&self) -> Off {
        match self.app() {
            ("Start", []) => Off::Start,
            ("At", [n]) => Off::At(n.num() as u16),
            ("Far", []) => Off::Far,
            t => panic!("not an offset: {t:?}"),
        }
    }
    fn step(&self) -> Step {
        let u8_ = |t: &Term| t.num() as u8;
        match self.app() {
            ("Mkdir", [p]) => Step::Mkdir(p.p()),
            ("Create", [p, l]) => Step::Create(p.p(), l.len()),
            ("Open", [s, p]) => Step::Open(u8_(s), p.p()),
            ("Write", [s, o, l]) => Step::Write(u8_(s), o.off(), l.len()),
            ("Close", [s]) => Step::Close(u8_(s)),
            ("Fsync", [s]) => Step::Fsync(u8_(s)),
            ("WriteAt", [p, o, l]) => Step::WriteAt(p.p(), o.off(), l.len()),
            ("Truncate", [p, o]) => Step::Truncate(p.p(), o.off()),
            ("Rename", [a, b]) => Step::Rename(a.p(), b.p()),
            ("Unlink", [p]) => Step::Unlink(p.p()),
            ("Rmdir", [p]) => Step::Rmdir(p.p()),
            ("RmRf", [p]) => Step::RmRf(p.p()),
            ("Symlink", [p, t]) => Step::Symlink(p.p(), u8_(t)),
            ("Mkfifo", [p]) => Step::Mkfifo(p.p()),
            ("Chmod", [p, m]) => Step::Chmod(p.p(), m.num() as u16),
            ("SetXattr", [p, v]) => Step::SetXattr(
                p.p(),
                match v.app() {
                    ("None", []) => None,
                    ("Some", [n]) => Some(u8_(n)),
                    t => panic!("not an option: {t:?}"),
                },
            ),
            ("Check", [p]) => Step::Check(p.p()),
            ("Foreign", [p, l]) => Step::Foreign(p.p(), l.len()),
            ("Settle", []) => Step::Settle,
            ("Outage", [n]) => Step::Outage(u8_(n)),
            ("Restart", []) => Step::Restart,
            t => panic!("not a step: {t:?}"),
        }
    }
}

/// Runs a sequence as the failure message prints it (one step per line).
/// The steps of a sequence as a failure message prints them.
pub(super) fn parse_steps(text: &str) -> Vec<Step> {
    parse_terms(text).iter().map(Term::step).collect()
}
