#!/usr/bin/env node
import {setFlagsFromString} from 'node:v8'

// Copies and host I/O run on libuv's thread pool; its default 4 threads cap the reads and
// writes in flight (a restore of scattered extents waits on them). Set before any I/O.
process.env.UV_THREADPOOL_SIZE ??= '16'
// `serve`: atomic, not incremental, old-space GC. It receives host data in 64 KiB socket
// chunks, each a new ArrayBuffer; at 1 GB/s their external memory started ~70 incremental
// marking cycles a second, and 1M sequential I/O through `serve` spent a third of its time in
// GC (cpu profile). Measured on the bench machine, fio 1M QD8 over serve: writes 1.0–1.25 →
// 2.2–2.4 GB/s, reads 1.8 → 3.6 GB/s; 4K random I/O unchanged. Not for the copy commands:
// their buffers are pooled, so it gained nothing there and raised a 16 GiB restore's peak RSS
// by ~12 MiB (later, larger collections). Set before anything is allocated.
if (process.argv[2] === 'serve') setFlagsFromString('--no-incremental-marking')
const {execute} = await import('@oclif/core')

await execute({dir: import.meta.url})
