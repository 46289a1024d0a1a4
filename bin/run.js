#!/usr/bin/env node
// Copies and host I/O run on libuv's thread pool; its default 4 threads cap the reads and
// writes in flight (a restore of scattered extents waits on them). Set before any I/O.
process.env.UV_THREADPOOL_SIZE ??= '16'
const {execute} = await import('@oclif/core')

await execute({dir: import.meta.url})
