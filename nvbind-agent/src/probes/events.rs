//! The ring buffer's records (frames and rare process and display events), decoded into
//! [`Event`]s.

use nvbind_common::{
    CompileEvent, DisplayEvent, EventHeader, EventKind, ExecNotice, PresentEvent, ProcessEvent,
    ResolvedPresentEvent, ThreadExitRecord,
};

use super::Probes;

/// A record read from the ring buffer.
// Frames are the common case and each event is moved once from the ring buffer to its handler:
// boxing them would cost an allocation per frame to save a copy of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy)]
pub enum Event {
    Present(PresentEvent),
    VulkanPresentResolved(ResolvedPresentEvent),
    ProcessTracked(ProcessEvent),
    ProcessExec(ProcessEvent),
    ProcessExit(ProcessEvent),
    Display(DisplayEvent),
    ProcessRenamed(ProcessEvent),
    Compile(CompileEvent),
}

impl Probes {
    /// Reads every record waiting in the ring buffer.
    pub fn drain_events(&mut self, mut on_event: impl FnMut(Event)) {
        while let Some(item) = self.events.next() {
            if let Some(event) = decode(&item) {
                on_event(event);
            }
        }
    }
    /// Reads every exited-thread record waiting (their own ring buffer, drained with the events).
    pub fn drain_thread_exits(&mut self, on_exit: impl FnMut(ThreadExitRecord)) {
        drain_records(&mut self.thread_exits, on_exit);
    }
    /// Exited-thread records the kernel could not send (their ring buffer was full), in all.
    pub fn thread_exits_lost(&self) -> u64 {
        self.sum_per_cpu("THREAD_EXITS_LOST", 0)
    }
    /// Reads every exec notice waiting (the daemon's; their own ring buffer).
    pub fn drain_exec_notices(&mut self, on_exec: impl FnMut(ExecNotice)) {
        drain_records(&mut self.exec_notices, on_exec);
    }
    /// Exec notices the kernel could not send (their ring buffer was full), in all.
    pub fn exec_notices_lost(&self) -> u64 {
        self.sum_per_cpu("EXEC_NOTICES_LOST", 0)
    }
    /// The exec notices' descriptor: readable when a notice that asked for a wakeup is waiting.
    pub fn exec_notices_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.exec_notices.as_raw_fd()
    }
    /// The ring buffer's descriptor: readable when a record that asked for a wakeup (a resolved
    /// Vulkan present function, a new process) is waiting. Frames never wake it.
    pub fn events_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.events.as_raw_fd()
    }
}

/// Reads every record waiting in a ring buffer of `T`s alone.
fn drain_records<T: aya::Pod>(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    mut on_record: impl FnMut(T),
) {
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<T>() {
            // SAFETY: length checked; T is a plain-old-data record (see nvbind-common).
            on_record(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
        }
    }
}

fn decode(bytes: &[u8]) -> Option<Event> {
    fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
        (bytes.len() >= size_of::<T>())
            // SAFETY: length checked; T is a plain-old-data record (see nvbind-common).
            .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
    }
    let header: EventHeader = read(bytes)?;
    Some(match EventKind::from_u32(header.kind)? {
        EventKind::Present => Event::Present(read(bytes)?),
        EventKind::VulkanPresentResolved => Event::VulkanPresentResolved(read(bytes)?),
        EventKind::ProcessTracked => Event::ProcessTracked(read(bytes)?),
        EventKind::ProcessExec => Event::ProcessExec(read(bytes)?),
        EventKind::ProcessExit => Event::ProcessExit(read(bytes)?),
        EventKind::Display => Event::Display(read(bytes)?),
        EventKind::ProcessRenamed => Event::ProcessRenamed(read(bytes)?),
        EventKind::Compile => Event::Compile(read(bytes)?),
    })
}

#[cfg(test)]
mod tests {
    use nvbind_common::event_kind;

    use super::*;

    #[test]
    fn decodes_records_by_kind() {
        let mut e = PresentEvent::default();
        e.header.kind = event_kind::PRESENT;
        e.header.tgid = 7;
        e.delta.on_cpu_ns = 5;
        // SAFETY: reading the bytes of a plain-old-data value.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const PresentEvent).cast::<u8>(),
                size_of::<PresentEvent>(),
            )
        };
        match decode(bytes) {
            Some(Event::Present(p)) => {
                assert_eq!(p.header.tgid, 7);
                assert_eq!(p.delta.on_cpu_ns, 5);
            }
            other => panic!("decoded {other:?}"),
        }
        assert!(decode(&bytes[..10]).is_none(), "a short record is rejected");

        let mut c = CompileEvent::default();
        c.header.kind = event_kind::COMPILE;
        c.header.aux = nvbind_common::compile_call::GRAPHICS_PIPELINES;
        c.pipelines = 3;
        // SAFETY: reading the bytes of a plain-old-data value.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&c as *const CompileEvent).cast::<u8>(),
                size_of::<CompileEvent>(),
            )
        };
        match decode(bytes) {
            Some(Event::Compile(e)) => assert_eq!((e.header.aux, e.pipelines), (1, 3)),
            other => panic!("decoded {other:?}"),
        }
    }
}
