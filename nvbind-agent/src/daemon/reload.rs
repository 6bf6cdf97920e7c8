//! SIGHUP: the configuration re-read and applied where it can be without a restart.

use super::{sessions, tracking::Daemon};

impl Daemon {
    /// SIGHUP: re-reads the configuration. A bad file is reported and the running one kept.
    pub(super) fn reload(&mut self) {
        let config = match self.options.load_config() {
            Ok(c) => c,
            Err(e) => {
                log::error!("SIGHUP: configuration not reloaded, the running one stays: {e:#}");
                return;
            }
        };
        match sessions::prepare_dir(&config.reports, false) {
            Ok(notes) => notes.iter().for_each(|note| log::info!("SIGHUP: {note}")),
            Err(e) => {
                log::error!("SIGHUP: configuration not reloaded, the running one stays: {e}");
                return;
            }
        }
        let needs_restart: Vec<&str> = [
            ("api.listen", config.api.listen != self.config.api.listen),
            ("api.socket", config.api.socket != self.config.api.socket),
            ("gpu", config.gpu != self.config.gpu),
            ("probes", config.probes != self.config.probes),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        if !needs_restart.is_empty() {
            log::warn!(
                "SIGHUP: {} changed and take effect only after a restart",
                needs_restart.join(", ")
            );
        }
        self.tracker.set_stutter_config(config.detector());
        super::subuids::apply(self.tracker.probes_mut(), &config.games.subuid_file);
        self.tracker
            .set_frame_rate_cap(config.games.max_fps_per_user);
        let cap_applied = match self
            .tracker
            .probes_mut()
            .set_discovery_cap(config.games.max_per_user)
        {
            Ok(()) => true,
            Err(e) => {
                log::error!("SIGHUP: games.max_per_user not applied, the running cap stays: {e}");
                false
            }
        };
        self.live().window = config.window();
        *self
            .shared
            .config
            .write()
            .unwrap_or_else(|p| p.into_inner()) = config.clone();
        // Keep what cannot change without a restart as it runs.
        let mut applied = config;
        applied.api.listen = self.config.api.listen.clone();
        applied.api.socket = self.config.api.socket.clone();
        applied.gpu = self.config.gpu.clone();
        applied.probes = self.config.probes.clone();
        if !cap_applied {
            applied.games.max_per_user = self.config.games.max_per_user;
        }
        self.config = applied;
        // Processes excluded under the old lists are looked at again under the new ones.
        self.rejected.clear();
        log::info!(
            "SIGHUP: configuration reloaded from {}",
            self.options.config_path.display()
        );
    }
}
