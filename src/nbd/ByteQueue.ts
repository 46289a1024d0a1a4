const EMPTY = Buffer.alloc(0)

/**
 * Bytes received and not parsed yet (the server's and the client's receive buffer): the
 * socket's chunks, in order. Headers are read in place when they sit in one chunk (`header`
 * sets `pos`); `take` copies only what does not, so a 32 MiB write arriving in hundreds of
 * chunks costs one copy, never O(n²).
 */
export class ByteQueue {
  private chunks: Buffer[] = []
  private head = 0
  length = 0
  /** Where the last `header` result starts in the buffer it returned. */
  pos = 0
  private readonly scratch = Buffer.allocUnsafe(64)

  push(b: Buffer): void {
    if (b.length === 0) return
    this.chunks.push(b)
    this.length += b.length
  }

  /** Consume n (≤ 64, ≤ length) bytes; they are at `pos` in the buffer returned, valid until the next call. */
  header(n: number): Buffer {
    const first = this.chunks[0]
    if (first.length - this.head >= n) {
      this.pos = this.head
      this.advance(first, n)
      this.length -= n
      return first
    }
    this.copyOut(this.scratch, n)
    this.pos = 0
    return this.scratch
  }

  /**
   * Consume and return n (≤ length) bytes: a view when they sit in one chunk, else one copy
   * into `alloc(n)` (default a new buffer).
   */
  take(n: number, alloc: (n: number) => Buffer = (k) => Buffer.allocUnsafe(k)): Buffer {
    if (n === 0) return EMPTY
    const first = this.chunks[0]
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n)
      this.advance(first, n)
      this.length -= n
      return out
    }
    const out = alloc(n)
    this.copyOut(out, n)
    return out
  }

  /** Discard n (≤ length) bytes. */
  skip(n: number): void {
    let left = n
    while (left > 0) {
      const c = this.chunks[0]
      const k = Math.min(c.length - this.head, left)
      this.advance(c, k)
      left -= k
    }
    this.length -= n
  }

  clear(): void {
    this.chunks = []
    this.head = 0
    this.length = 0
  }

  private advance(c: Buffer, k: number): void {
    this.head += k
    if (this.head === c.length) {
      this.chunks.shift()
      this.head = 0
    }
  }

  private copyOut(out: Buffer, n: number): void {
    let done = 0
    while (done < n) {
      const c = this.chunks[0]
      const k = Math.min(c.length - this.head, n - done)
      c.copy(out, done, this.head, this.head + k)
      done += k
      this.advance(c, k)
    }
    this.length -= n
  }
}
