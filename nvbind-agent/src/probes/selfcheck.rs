//! `doctor`'s check of the `task_struct` offsets by value: Rust eBPF has no CO-RE, so the BTF
//! programs read fields at offsets the agent took from the running kernel's BTF. The check
//! program (`nvbind_offsets_check`, see the eBPF crate's `selfcheck.rs`) reads them for real
//! switches and compares each with the kernel's own answer.

use std::time::Duration;

use aya::{maps::PerCpuArray, programs::BtfTracePoint};
use nvbind_common::OffsetCheck;
use serde::Serialize;

use super::{error_chain, Probes};

/// The least share of comparisons that must be equal. A wrong offset reads another field and
/// next to never equals; a right one can miss now and then for a real reason (a thread that
/// execs from a non-leader thread takes the leader's pid between two of its switches).
const MIN_EQUAL_SHARE: f64 = 0.99;

/// One field, over every CPU.
#[derive(Debug, Clone, Serialize)]
pub struct FieldCheck {
    /// The field as the programs read it (`prev->pid`, ...).
    pub field: &'static str,
    /// What it was compared with.
    pub against: &'static str,
    pub compared: u64,
    pub equal: u64,
}

impl FieldCheck {
    pub fn holds(&self) -> bool {
        self.compared > 0 && self.equal as f64 >= MIN_EQUAL_SHARE * self.compared as f64
    }
}

/// What the check saw.
#[derive(Debug, Clone, Serialize)]
pub struct OffsetsChecked {
    pub switches: u64,
    /// Fields whose offset the kernel's BTF gave (`prev->tgid` only with the lineage layout).
    pub fields: Vec<FieldCheck>,
}

impl OffsetsChecked {
    /// Whether every field read held (and some switches were seen).
    pub fn holds(&self) -> bool {
        self.switches > 0 && self.fields.iter().all(FieldCheck::holds)
    }
}

impl Probes {
    /// Attaches the check program to `sched_switch` for `how_long`, then detaches it and adds up
    /// what it saw. Only meaningful where the scheduler programs run on BTF tracepoints (the
    /// offsets are set at load only then).
    pub fn check_task_offsets(&mut self, how_long: Duration) -> Result<OffsetsChecked, String> {
        let btf = aya::Btf::from_sys_fs()
            .map_err(|e| format!("cannot read the kernel's BTF: {}", error_chain(&e)))?;
        let prog: &mut BtfTracePoint = self.program("nvbind_offsets_check")?;
        prog.load("sched_switch", &btf)
            .map_err(|e| format!("cannot load the offsets check: {}", error_chain(&e)))?;
        let link = prog
            .attach()
            .map_err(|e| format!("cannot attach the offsets check: {}", error_chain(&e)))?;
        // Switches of its own, so that even an idle machine gives the check thousands: a thread
        // that sleeps a tenth of a millisecond at a time switches out and in at each.
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            // Without it (no thread to be had) the machine's own switches are checked.
            let _ = std::thread::Builder::new().spawn_scoped(scope, || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_micros(100));
                }
            });
            std::thread::sleep(how_long);
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        // Detached before the counts are read, so they are final.
        let _ = prog.detach(link);
        let map = self.map("OFFSET_CHECKS").map_err(|e| e.to_string())?;
        let per_cpu = PerCpuArray::<_, OffsetCheck>::try_from(map)
            .and_then(|array| array.get(&0, 0))
            .map_err(|e| format!("cannot read the offsets check: {}", error_chain(&e)))?;
        let mut sum = OffsetCheck::default();
        for c in per_cpu.iter() {
            sum.switches += c.switches;
            sum.pid_equal += c.pid_equal;
            sum.cpu_equal += c.cpu_equal;
            sum.comm_equal += c.comm_equal;
            sum.tgid_compared += c.tgid_compared;
            sum.tgid_equal += c.tgid_equal;
            sum.next_compared += c.next_compared;
            sum.next_equal += c.next_equal;
        }
        Ok(summarize(&sum))
    }
}

fn summarize(sum: &OffsetCheck) -> OffsetsChecked {
    let every = |field, against, equal| FieldCheck {
        field,
        against,
        compared: sum.switches,
        equal,
    };
    let mut fields = vec![
        every("prev->pid", "the current tid", sum.pid_equal),
        every("prev->cpu", "the current CPU", sum.cpu_equal),
        every("prev->comm", "the current comm", sum.comm_equal),
        FieldCheck {
            field: "next->pid",
            against: "the tid the CPU's next switch switches out",
            compared: sum.next_compared,
            equal: sum.next_equal,
        },
    ];
    if sum.tgid_compared > 0 {
        fields.push(FieldCheck {
            field: "prev->tgid",
            against: "the current tgid",
            compared: sum.tgid_compared,
            equal: sum.tgid_equal,
        });
    }
    OffsetsChecked {
        switches: sum.switches,
        fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_holds_only_when_nearly_every_comparison_is_equal() {
        let checked = |equal| FieldCheck {
            field: "prev->pid",
            against: "the current tid",
            compared: 1000,
            equal,
        };
        assert!(checked(1000).holds());
        assert!(checked(995).holds());
        assert!(!checked(900).holds());
        assert!(!checked(0).holds());
        let none = FieldCheck {
            compared: 0,
            equal: 0,
            ..checked(0)
        };
        assert!(!none.holds(), "nothing compared proves nothing");
    }

    #[test]
    fn the_tgid_is_listed_only_when_its_offset_was_known() {
        let sum = OffsetCheck {
            switches: 10,
            pid_equal: 10,
            cpu_equal: 10,
            comm_equal: 10,
            next_compared: 9,
            next_equal: 9,
            ..Default::default()
        };
        let checked = summarize(&sum);
        assert!(checked.holds());
        assert!(!checked.fields.iter().any(|f| f.field == "prev->tgid"));
        let with_tgid = summarize(&OffsetCheck {
            tgid_compared: 10,
            tgid_equal: 2,
            ..sum
        });
        assert!(
            !with_tgid.holds(),
            "a tgid read at a wrong offset fails the check"
        );
    }
}
