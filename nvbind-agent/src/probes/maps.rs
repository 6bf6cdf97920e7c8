//! What nvbind tells the kernel programs (which processes and names to track, which ioctl types
//! are GPU calls) and reads back from their maps (threads, histograms, preemptors, counters).

use std::collections::HashSet;

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    Pod,
};
use nvbind_common::{
    pending_present_key, present_source, thread_status, track_flags, DrmFileOwner, DrmIoctlKey,
    PreemptorKey, PreemptorValue, PresentEvent, ProcessHistograms, ThreadState, TASK_COMM_LEN,
};

use super::{comm_key, ProbeError, Probes};

/// What [`Probes::take_exited_thread`] found.
#[derive(Debug)]
pub enum ExitedThread {
    /// Its final counters; its entry is gone from the kernel's table.
    Taken(Box<ThreadState>),
    /// It has not made its last switch yet: ask again a little later.
    NotYet,
    /// No entry of that process's thread with that tid is there (any more).
    Gone,
}

impl Probes {
    pub(super) fn map(&self, name: &'static str) -> Result<&aya::maps::Map, ProbeError> {
        self.ebpf.map(name).ok_or(ProbeError::MissingMap(name))
    }
    /// A hash map of the object, read-only.
    pub(super) fn hash_map<K: Pod, V: Pod>(
        &self,
        name: &'static str,
    ) -> Result<BpfHashMap<&MapData, K, V>, ProbeError> {
        BpfHashMap::try_from(self.map(name)?)
            .map_err(|source| ProbeError::Map { map: name, source })
    }
    /// A hash map of the object, writable.
    pub(super) fn hash_map_mut<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHashMap<&mut MapData, K, V>, ProbeError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(ProbeError::MissingMap(name))?;
        BpfHashMap::try_from(map).map_err(|source| ProbeError::Map { map: name, source })
    }
    /// Wraps a map operation's error with the map's name.
    pub(super) fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
        move |source| ProbeError::Map { map: name, source }
    }
    /// Starts tracking a process and the threads it has now (new ones are tracked by the kernel).
    pub fn track_process(&mut self, pid: u32, follow_children: bool) -> Result<(), ProbeError> {
        let flags = if follow_children {
            track_flags::FOLLOW_CHILDREN
        } else {
            0
        };
        {
            let mut hists = self.hash_map_mut::<u32, ProcessHistograms>("PROC_HISTS")?;
            if hists.get(&pid, 0).is_err() {
                hists
                    .insert(pid, ProcessHistograms::default(), 0)
                    .map_err(Self::map_err("PROC_HISTS"))?;
            }
        }
        // The process first, so threads it creates from now on are caught by the kernel...
        self.hash_map_mut::<u32, u32>("TRACKED_PROCESSES")?
            .insert(pid, flags, 0)
            .map_err(Self::map_err("TRACKED_PROCESSES"))?;
        // ...then the threads it already has.
        let now = crate::clock::monotonic_ns();
        let mut threads = self.hash_map_mut::<u32, ThreadState>("THREADS")?;
        let mut inserted = Vec::new();
        for tid in thread_ids(pid) {
            if threads.get(&tid, 0).is_ok() {
                continue;
            }
            let state = ThreadState {
                tgid: pid,
                since_ns: now,
                last_cpu: u32::MAX,
                ..Default::default()
            };
            // BPF_NOEXIST: the kernel may have added it meanwhile (and marked it).
            if threads.insert(tid, state, 1).is_ok() {
                inserted.push(tid);
            }
        }
        if let Some(marks) = &self.tid_marks {
            for tid in inserted {
                marks.mark(tid);
            }
        }
        Ok(())
    }
    /// Stops tracking a process and forgets its kernel state (threads, histograms). In discovery
    /// mode `ignore` also keeps its next presents from tracking it again, until
    /// [`Self::forget_ignored`].
    pub fn untrack_process(&mut self, pid: u32, ignore: bool) -> Result<(), ProbeError> {
        if ignore {
            self.hash_map_mut::<u32, u32>("IGNORED_PROCESSES")?
                .insert(pid, 1, 0)
                .map_err(Self::map_err("IGNORED_PROCESSES"))?;
        }
        // Its user's discovery charge first: once it leaves the tracked set, its next present
        // may discover it again.
        // (It may not keep the rest from being forgotten.)
        if let Err(e) = self.release_discovery(pid) {
            log::warn!("pid {pid}: its user's discovery charge could not be given back: {e}");
        }
        // Removing a missing key fails with ENOENT: nothing to undo then.
        let _ = self
            .hash_map_mut::<u32, u32>("TRACKED_PROCESSES")?
            .remove(&pid);
        let _ = self
            .hash_map_mut::<u32, ProcessHistograms>("PROC_HISTS")?
            .remove(&pid);
        let tids: Vec<u32> = self
            .threads()?
            .into_iter()
            .filter(|(_, t)| t.tgid == pid)
            .map(|(tid, _)| tid)
            .collect();
        for tid in &tids {
            self.remove_thread(*tid)?;
        }
        let mut presenters = self.hash_map_mut::<u32, ProcessHistograms>("PRESENTER_HISTS")?;
        for tid in &tids {
            let _ = presenters.remove(tid);
        }
        // Frames of calls that never returned (the process died inside one).
        self.forget_pending_presents(&tids);
        // Its DRM requests and files: a daemon runs for days, and a reused pid is another game.
        // (Maps whose program was never loaded, without DRM, are simply absent.)
        if let Ok(mut counts) = self.hash_map_mut::<DrmIoctlKey, u64>("DRM_IOCTL_COUNTS") {
            let keys: Vec<DrmIoctlKey> = counts
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.tgid == pid)
                .collect();
            for key in keys {
                let _ = counts.remove(&key);
            }
        }
        if let Ok(mut owners) = self.hash_map_mut::<u64, DrmFileOwner>("DRM_FILE_OWNERS") {
            let files: Vec<u64> = owners
                .iter()
                .filter_map(Result::ok)
                .filter(|(_, o)| o.tgid == pid)
                .map(|(file, _)| file)
                .collect();
            for file in files {
                let _ = owners.remove(&file);
            }
        }
        // Last: until its threads left the table, its presents could still count some.
        self.forget_frames_over_rate(pid);
        Ok(())
    }
    /// Drops ignored processes that no longer exist (their pid may be reused by a game).
    pub fn forget_ignored(&mut self, is_alive: impl Fn(u32) -> bool) -> Result<(), ProbeError> {
        let mut ignored = self.hash_map_mut::<u32, u32>("IGNORED_PROCESSES")?;
        let gone: Vec<u32> = ignored
            .keys()
            .filter_map(Result::ok)
            .filter(|&pid| !is_alive(pid))
            .collect();
        for pid in gone {
            let _ = ignored.remove(&pid);
        }
        Ok(())
    }
    /// Tracks every process whose `execve` gives it this name (comm, at most 15 bytes).
    pub fn watch_comm(&mut self, name: &str, follow_children: bool) -> Result<(), ProbeError> {
        let flags = if follow_children {
            track_flags::FOLLOW_CHILDREN
        } else {
            0
        };
        self.hash_map_mut::<[u8; TASK_COMM_LEN], u32>("WATCHED_COMMS")?
            .insert(comm_key(name), flags, 0)
            .map_err(Self::map_err("WATCHED_COMMS"))
    }
    /// Declares ioctl type bytes (`_IOC_TYPE`) as GPU driver calls, for drivers nvbind does not know
    /// by name: time blocked inside them counts as a GPU driver wait.
    pub fn declare_gpu_ioctl_types(&mut self, types: &[u8]) -> Result<(), ProbeError> {
        const MAP: &str = "DECLARED_GPU_IOCTL_TYPES";
        let map = self.ebpf.map_mut(MAP).ok_or(ProbeError::MissingMap(MAP))?;
        let mut array = aya::maps::Array::<_, u32>::try_from(map).map_err(Self::map_err(MAP))?;
        for &t in types {
            array.set(u32::from(t), 1, 0).map_err(Self::map_err(MAP))?;
        }
        Ok(())
    }
    /// The state of the given threads now (threads no longer tracked are left out). One map
    /// lookup per thread: cheaper than walking the whole map when several processes are tracked.
    pub fn thread_states(&self, tids: &[u32]) -> Result<Vec<(u32, ThreadState)>, ProbeError> {
        let threads = self.hash_map::<u32, ThreadState>("THREADS")?;
        Ok(tids
            .iter()
            .filter_map(|&tid| Some((tid, threads.get(&tid, 0).ok()?)))
            .collect())
    }
    /// Takes the entry of thread `tid` of process `tgid` out of the kernel's table once it is
    /// final (its last switch marked it exited), returning its counters.
    pub fn take_exited_thread(&mut self, tid: u32, tgid: u32) -> Result<ExitedThread, ProbeError> {
        let threads = self.hash_map::<u32, ThreadState>("THREADS")?;
        let Ok(state) = threads.get(&tid, 0) else {
            return Ok(ExitedThread::Gone);
        };
        if state.tgid != tgid {
            // The tid is already another thread's (reused), or the entry went with its process.
            return Ok(ExitedThread::Gone);
        }
        if state.status != thread_status::EXITED {
            return Ok(ExitedThread::NotYet);
        }
        // The kernel writes an exited entry over only for a new thread with the same tid: after
        // the tid space wraps, or at once when a thread other than the leader execs (it takes
        // the leader's tid). Between this lookup and the delete that is rare but possible; the
        // new thread's entry is then made again at its next tracked event (`current_thread`),
        // missing only what it did meanwhile.
        self.remove_thread(tid)?;
        self.forget_pending_presents(&[tid]);
        Ok(ExitedThread::Taken(Box::new(state)))
    }
    /// Removes `tid`'s entry and unmarks it, marking it back if the kernel made a new entry for
    /// the tid meanwhile (it marks only after its insert, so the look after the unmark sees it).
    fn remove_thread(&mut self, tid: u32) -> Result<(), ProbeError> {
        let mut threads = self.hash_map_mut::<u32, ThreadState>("THREADS")?;
        let _ = threads.remove(&tid);
        if let Some(marks) = &self.tid_marks {
            marks.unmark(tid);
            if self
                .hash_map::<u32, ThreadState>("THREADS")?
                .get(&tid, 0)
                .is_ok()
            {
                marks.mark(tid);
            }
        }
        Ok(())
    }
    /// Drops the frames held for present calls of these threads that never returned: a thread
    /// that exits or is killed inside one would otherwise keep its entry for good.
    fn forget_pending_presents(&mut self, tids: &[u32]) {
        if let Ok(mut pending) = self.hash_map_mut::<u64, PresentEvent>("PENDING_PRESENTS") {
            for &tid in tids {
                for source in [present_source::VULKAN_RESOLVED, present_source::EGL] {
                    let _ = pending.remove(&pending_present_key(tid, source));
                }
            }
        }
    }
    /// Exited threads still in the kernel's table, of the processes in `pids`: (tid, tgid).
    pub fn exited_threads_of(&self, pids: &HashSet<u32>) -> Result<Vec<(u32, u32)>, ProbeError> {
        Ok(self
            .threads()?
            .into_iter()
            .filter(|(_, t)| t.status == thread_status::EXITED && pids.contains(&t.tgid))
            .map(|(tid, t)| (tid, t.tgid))
            .collect())
    }
    /// Every tracked thread's state, by tid.
    pub fn threads(&self) -> Result<Vec<(u32, ThreadState)>, ProbeError> {
        let threads = self.hash_map::<u32, ThreadState>("THREADS")?;
        Ok(threads.iter().filter_map(Result::ok).collect())
    }
    /// The in-kernel run-queue and blocked-time histograms of a tracked process.
    pub fn histograms(&self, tgid: u32) -> Result<Option<ProcessHistograms>, ProbeError> {
        let hists = self.hash_map::<u32, ProcessHistograms>("PROC_HISTS")?;
        Ok(hists.get(&tgid, 0).ok())
    }
    /// The run-queue and blocked-time histograms of a thread that presented frames.
    pub fn presenter_histograms(&self, tid: u32) -> Result<Option<ProcessHistograms>, ProbeError> {
        let hists = self.hash_map::<u32, ProcessHistograms>("PRESENTER_HISTS")?;
        Ok(hists.get(&tid, 0).ok())
    }
    /// Who preempted tracked processes: (victim tgid, preemptor tid, count, preemptor comm).
    pub fn preemptors(&self) -> Result<Vec<(PreemptorKey, PreemptorValue)>, ProbeError> {
        let map = self.hash_map::<PreemptorKey, PreemptorValue>("PREEMPTORS")?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }
    /// Ring-buffer records lost because the buffer was full.
    pub fn dropped_events(&self) -> u64 {
        self.sum_per_cpu("DROPPED_EVENTS", 0)
    }
    /// Long compile calls counted but not sent (the ring buffer was a quarter full).
    pub fn compiles_not_sent(&self) -> u64 {
        self.sum_per_cpu("COMPILES_NOT_SENT", 0)
    }
    /// Inserts the kernel refused because a tracking map was full, per
    /// `nvbind_common::map_full` slot.
    pub fn map_full_counts(&self) -> [u64; nvbind_common::map_full::COUNT as usize] {
        std::array::from_fn(|slot| self.sum_per_cpu("MAP_FULL", slot as u32))
    }
    pub(super) fn sum_per_cpu(&self, map: &'static str, index: u32) -> u64 {
        let Ok(map) = self.map(map) else { return 0 };
        let Ok(array) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        array
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }
}

/// The threads of a process now (empty if it is gone).
pub fn thread_ids(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
