//! Steps of the tracked scheduler path the benchmark leaves out, to measure what each costs per
//! context switch (`record --leave-out STEP`, hidden: every step is part of what a report says).

use nvbind_common::sched_step;

/// A step of the tracked scheduler path (see `nvbind_common::sched_step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchedStep {
    /// Who held a watched CPU: the holder's process (its lineage) and names.
    HolderDetails,
    /// The CPU watch that finds who held a waiting thread's CPU longest.
    CulpritWatch,
    /// Naming a culprit for each run-queue wait.
    CulpritNaming,
    /// The run-queue and blocked-time histograms.
    Histograms,
}

impl SchedStep {
    fn bit(self) -> u32 {
        match self {
            SchedStep::HolderDetails => sched_step::HOLDER_DETAILS,
            SchedStep::CulpritWatch => sched_step::CULPRIT_WATCH,
            SchedStep::CulpritNaming => sched_step::CULPRIT_NAMING,
            SchedStep::Histograms => sched_step::HISTOGRAMS,
        }
    }
}

/// Steps left out, as the object's `LEFT_OUT` global (none by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeftOut(u32);

impl LeftOut {
    pub fn steps(steps: &[SchedStep]) -> LeftOut {
        LeftOut(steps.iter().fold(0, |bits, step| bits | step.bit()))
    }

    pub(super) fn bits(self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_is_its_own_bit_and_none_leaves_nothing_out() {
        assert_eq!(LeftOut::default().bits(), 0);
        let all = [
            SchedStep::HolderDetails,
            SchedStep::CulpritWatch,
            SchedStep::CulpritNaming,
            SchedStep::Histograms,
        ];
        let bits: Vec<u32> = all.iter().map(|s| LeftOut::steps(&[*s]).bits()).collect();
        for (i, b) in bits.iter().enumerate() {
            assert_eq!(b.count_ones(), 1, "{:?}", all[i]);
            assert!(bits[..i].iter().all(|other| other & b == 0));
        }
        assert_eq!(LeftOut::steps(&all).bits(), bits.iter().sum::<u32>());
        assert_eq!(
            LeftOut::steps(&[SchedStep::Histograms, SchedStep::Histograms]).bits(),
            sched_step::HISTOGRAMS
        );
    }
}
