/**
 * Buffers for WRITE payloads that arrive across socket chunks, reused once the backend's
 * write settled: a fresh 1 MiB Buffer per request kept the garbage collector busy on
 * sequential writes.
 * Buffers come in power-of-two classes from 64 KiB; each class keeps at most `keep` free,
 * and all classes together at most `maxKeptBytes` (a burst of 32 MiB writes must not leave
 * a gigabyte parked here after it: issue 13 item 1).
 */
const MIN_CLASS = 64 * 1024

export class PayloadPool {
  private readonly free = new Map<number, ArrayBuffer[]>()
  /** Bytes of the buffers kept free. */
  kept = 0

  constructor(
    private readonly keep = 32,
    readonly maxKeptBytes = 64 * 1024 * 1024,
  ) {}

  /** A buffer of exactly n bytes (a view of a pooled class-sized one). */
  get(n: number): Buffer {
    const cls = PayloadPool.classOf(n)
    const ab = this.free.get(cls)?.pop()
    if (ab) this.kept -= cls
    return Buffer.from(ab ?? new ArrayBuffer(cls), 0, n)
  }

  /** Give back a buffer from get(), once nothing reads it any more. */
  put(b: Buffer): void {
    const ab = b.buffer
    if (!(ab instanceof ArrayBuffer) || ab.byteLength !== PayloadPool.classOf(ab.byteLength) || b.byteOffset !== 0) return
    const list = this.free.get(ab.byteLength) ?? []
    if (list.length >= this.keep || this.kept + ab.byteLength > this.maxKeptBytes) return
    list.push(ab)
    this.kept += ab.byteLength
    this.free.set(ab.byteLength, list)
  }

  /** Drop every kept buffer (the server hands memory back after a burst). */
  clear(): void {
    this.free.clear()
    this.kept = 0
  }

  static classOf(n: number): number {
    let c = MIN_CLASS
    while (c < n) c *= 2
    return c
  }
}
