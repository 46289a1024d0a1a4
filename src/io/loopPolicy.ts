/**
 * Where the small metadata calls on state files run: open and close, rename, a directory's
 * open for its fsync, and a state file's few KiB written into the page cache.
 *
 * A command that serves no host makes them synchronously, on the calling thread. Each is a
 * few µs in the kernel, while a round trip through libuv's thread pool costs a worker
 * wake-up and a completion wake-up. On a 2-core machine where V8's own threads also want the
 * CPU, perf trace showed 0.3–1.5 ms per round trip. A `clone add --create` made about 40 of
 * them before its first copy, and a state file's atomic save made 8.
 *
 * A process that serves hosts (`serve`) must not make them synchronously. There, one call
 * waiting on a busy file system's journal would hold every host request on the event loop
 * behind it. From servingHosts() on, they go through the pool as they always did.
 *
 * fsync and fdatasync always go through the pool: they wait for the device.
 */
let servesHosts = false

/** This process serves hosts from now on (GroupServer.start, before anything is opened). */
export function servingHosts(): void {
  servesHosts = true
}

/** Whether small metadata calls may run on the calling thread (see above). */
export function metadataOnCallingThread(): boolean {
  return !servesHosts
}
