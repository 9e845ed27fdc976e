//! Engine knobs, named as vLLM names them.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchedulingPolicy {
    /// First come, first served; the newest request is preempted first.
    #[default]
    Fcfs,
    /// Lower `priority` value first (ties by arrival); the lowest-priority request is preempted first.
    Priority,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV blocks on the compute device.
    pub num_gpu_blocks: usize,
    /// KV blocks in host swap space.
    pub num_cpu_blocks: usize,
    /// Most tokens (prefill chunks + decodes) in one forward pass.
    pub max_num_batched_tokens: usize,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Longest prompt + output, in tokens.
    pub max_model_len: usize,
    pub enable_prefix_caching: bool,
    pub policy: SchedulingPolicy,
    /// A preempted sequence with at least this many computed tokens is swapped to host blocks
    /// (when there is room); shorter ones are recomputed, which costs less than two copies.
    pub swap_min_tokens: usize,
    /// Seeds the generator that gives requests without a seed their own (vLLM's `seed`):
    /// the same engine seed and the same requests give the same outputs. None: from entropy.
    pub seed: Option<u64>,
    /// Plan and launch step N+1 before step N's samples are back (vLLM's `async_scheduling`):
    /// the host's scheduling and output processing overlap the device's work. Step N+1's
    /// decodes read N's samples where the executor keeps them (see [`Executor::submit`]).
    ///
    /// [`Executor::submit`]: crate::Executor::submit
    pub async_scheduling: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            num_gpu_blocks: 1024,
            num_cpu_blocks: 0,
            max_num_batched_tokens: 2048,
            max_num_seqs: 256,
            max_model_len: 2048,
            enable_prefix_caching: true,
            policy: SchedulingPolicy::Fcfs,
            swap_min_tokens: 256,
            seed: None,
            async_scheduling: false,
        }
    }
}
