//! What one sweep of expired records removed.

/// What one sweep removed, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub email_codes: u64,
    pub reset_codes: u64,
    pub refresh_tokens: u64,
    pub sessions: u64,
    pub challenges: u64,
    pub ceremonies: u64,
    /// Index entries looked at (including ones whose record was gone or not yet due).
    pub entries: u64,
}

impl SweepReport {
    pub fn removed(&self) -> u64 {
        self.email_codes
            + self.reset_codes
            + self.refresh_tokens
            + self.sessions
            + self.challenges
            + self.ceremonies
    }

    pub fn add(&mut self, other: &SweepReport) {
        self.email_codes += other.email_codes;
        self.reset_codes += other.reset_codes;
        self.refresh_tokens += other.refresh_tokens;
        self.sessions += other.sessions;
        self.challenges += other.challenges;
        self.ceremonies += other.ceremonies;
        self.entries += other.entries;
    }
}
