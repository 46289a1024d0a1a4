/**
 * Bytes received but not yet parsed: a list of socket chunks. take(n) copies only what it
 * returns, so a 32 MiB write arriving in hundreds of chunks costs one copy, not O(n²).
 */
export class ByteQueue {
  private chunks: Buffer[] = []
  private head = 0
  length = 0

  push(b: Buffer): void {
    if (b.length === 0) return
    this.chunks.push(b)
    this.length += b.length
  }

  /** Remove and return the first n bytes (n <= length). */
  take(n: number): Buffer {
    const first = this.chunks[0]
    if (first && first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n)
      this.head += n
      if (this.head === first.length) {
        this.chunks.shift()
        this.head = 0
      }
      this.length -= n
      return out
    }
    const out = Buffer.allocUnsafe(n)
    let done = 0
    while (done < n) {
      const c = this.chunks[0]
      const k = Math.min(c.length - this.head, n - done)
      c.copy(out, done, this.head, this.head + k)
      done += k
      this.head += k
      if (this.head === c.length) {
        this.chunks.shift()
        this.head = 0
      }
    }
    this.length -= n
    return out
  }

  /** Discard n bytes. */
  skip(n: number): void {
    let left = n
    while (left > 0) {
      const c = this.chunks[0]
      const k = Math.min(c.length - this.head, left)
      left -= k
      this.head += k
      if (this.head === c.length) {
        this.chunks.shift()
        this.head = 0
      }
    }
    this.length -= n
  }
}
