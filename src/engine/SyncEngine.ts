import {ExtentBitmap} from '../map/ExtentBitmap.js'
import {alignedBuffer} from '../volume/alignedBuffer.js'
import {zeroExtents} from '../volume/holes.js'
import type {Volume, VolumeExtent} from '../volume/Volume.js'
import type {CollisionDetector} from './CollisionDetector.js'
import type {RateLimiter} from './RateLimiter.js'
import type {Scoreboard} from './Scoreboard.js'

/** What a SyncEngine needs from the delta map it walks (a PersistentMap satisfies it). */
export interface DeltaBits {
  readonly bits: ExtentBitmap
  /** Clear in memory; durable only at a checkpoint after the data is durable (recipe 2). */
  clear(start: number, end: number): void
}

export interface SyncProgress {
  /** Extents still to copy (set in the map and not skipped). */
  remainingExtents: number
  totalExtents: number
  copiedBytes: number
  /** Bytes that needed no copy (zero source over a zero destination, or equal under compare). */
  skippedBytes: number
  /**
   * Of skippedBytes, those made to read as zeros on the destination without reading the
   * source (a hole there over data here: punched, or zeroed on a block device).
   */
  zeroedBytes: number
  /** Bytes read from the source (holes are not read). */
  readBytes: number
}

export interface SyncJobOptions {
  map: DeltaBits
  from: Volume
  to: Volume
  extentSize: number
  /** Bytes of the volume that are tracked (the source's size). */
  volumeSize: number
  scoreboard: Scoreboard
  /**
   * Extents never to copy, as a bitmap of the map's size (restore: P — the host wrote them;
   * forward sync: write-intent extents, mirrored). Asked at each use (it may be replaced), and
   * read word by word: a 1 TiB sync looks at 16M extents, not one call per extent.
   */
  skip?: () => ExtentBitmap | undefined
  collisions?: CollisionDetector
  /** Compare-and-copy: read the destination too and write only what differs (untrusted maps). */
  compare?: boolean
  limiter?: RateLimiter
  /** Extents in flight at once, in chunks of up to chunkBytes. */
  parallel?: number
  chunkBytes?: number
  /** Called after each chunk's bits are cleared (its copy succeeded). */
  onCopied?: (start: number, end: number) => void
  /**
   * Called after each chunk's claims are released from the scoreboard, whether its copy
   * succeeded or failed (after onCopied): wake whoever waits for those extents (the COD
   * queue), and let the COD engine take over an extent whose copy failed.
   */
  onReleased?: (start: number, end: number) => void
  /**
   * Called every `checkpointBytes` copied, and at least every `checkpointMs` while copying
   * (a short timer, DESIGN §4: a throttled copy killed with SIGKILL must not lose minutes of
   * progress); a checkpoint makes progress durable.
   */
  checkpoint?: () => Promise<void>
  checkpointBytes?: number
  /** Default 1000 ms. */
  checkpointMs?: number
  /** Called when bytes were written to `to` (so the next checkpoint flushes it). */
  onWrite?: () => void
  /**
   * fdatasync `to` every this many bytes written (default 64 MiB). Node has neither
   * sync_file_range nor fadvise; without early writeback the kernel throttles the writer
   * once dirty pages pile up (dd's 5–8 s for 2 GiB). Measured on this machine, 2 GiB:
   * none 8.1 s, every 64 MiB awaited by the chunk that crossed it 1.0 s (nbdcopy: 1.1 s).
   * Where `to` tells its page-cache bytes (Volume.pageCacheBytesWritten), only those count:
   * O_DIRECT writes (a fresh image) leave no dirty page, and a flush for them would only
   * cost a journal commit and a device cache flush.
   */
  writebackBytes?: number
}

const MiB = 1024 * 1024
/** The longest range one hole sweep looks at (a lookup lists every data run in it). */
const SWEEP_BYTES = 4 * 1024 * MiB

/** The first extent run of [pos, pos+len) of vol, not listing the rest where the volume can. Waits. */
async function firstExtent(vol: Volume, pos: number, len: number): Promise<VolumeExtent | undefined> {
  return vol.firstExtent ? vol.firstExtent(pos, len) : (await vol.extents(pos, len))[0]
}

/**
 * Wait for every promise (none is left running against a buffer about to be reused), then
 * throw the first failure, if any.
 */
async function allOrFirstError(ps: Array<Promise<unknown>>): Promise<void> {
  const failed = (await Promise.allSettled(ps)).find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (failed) throw failed.reason
}
/** Chunks in flight per `parallel` while copies run inside the kernel (no buffer each). */
const KERNEL_FANOUT = 4
/** A window crosses at most this many extents that need no copy (read, not written). */
const WINDOW_GAP = 8

/**
 * The sync engine (DESIGN §1): walks a delta map in ascending order and copies each set
 * extent `from` → `to`, several chunks in flight, with bounded memory (parallel × chunkBytes).
 * An extent is claimed in the scoreboard while copied; a chunk's bits are cleared in memory
 * only when its write completed and no host write collided with it.
 *
 * run() waits until no extent is left (or stop() was called); it may run alongside host I/O
 * and the COD engine, which share the scoreboard. Never runs twice on one map at once.
 */
export class SyncEngine {
  private stopping = false
  private sinceWriteback = 0
  /** `to`'s pageCacheBytesWritten at the last early writeback (or at the start). */
  private pageCacheAtWriteback: number
  private paused?: {promise: Promise<void>; resume: () => void; idle: Promise<void>; parked: () => void}
  private readonly zero: Buffer
  private readonly written?: ExtentBitmap
  /** Extents whose last copy collided with a host write: the next copy is write-blocking. */
  private readonly collided = new Set<number>()
  /** Chunks are copied by Volume.copyFrom (see copyInKernel) until it says it cannot. */
  private copiesInKernel: boolean
  /** The source was data up to this byte when last looked at (no hole lookup below it). */
  private dataUntil = 0
  /**
   * Where the last sweep saw a hole of at least a chunk begin right after that data (-1:
   * none): windows end there (see clip). A hint only: stale, a window merely ends early or late.
   */
  private holeAt = -1
  readonly progress: SyncProgress

  constructor(private readonly o: SyncJobOptions) {
    const chunk = o.chunkBytes ?? 4 * MiB
    this.zero = Buffer.alloc(Math.max(chunk, o.extentSize))
    this.pageCacheAtWriteback = o.to.pageCacheBytesWritten ?? 0
    // A destination known to read as zero may skip zero chunks, but only where this run
    // has not written already (a re-copy after a collision must write its zeros).
    if (o.to.knownZero) this.written = new ExtentBitmap(o.map.bits.count)
    this.copiesInKernel = Boolean(o.to.knownZero && !o.compare && o.to.copyFrom && o.to.canCopyFrom?.(o.from))
    // A source that cannot tell holes is all data: no lookups (nor the awaits they cost).
    if (o.from.tellsHoles?.() === false) this.dataUntil = Number.POSITIVE_INFINITY
    const total = this.remaining()
    this.progress = {remainingExtents: total, totalExtents: total, copiedBytes: 0, skippedBytes: 0, zeroedBytes: 0, readBytes: 0}
  }

  /** Extents still to copy: set and not skipped. */
  remaining(): number {
    const {bits} = this.o.map
    const skip = this.o.skip?.()
    return skip ? bits.countAndNot(skip) : bits.countSet()
  }

  /** Ask run() to stop issuing copies; it resolves once in-flight chunks finish. */
  stop(): void {
    this.stopping = true
    this.paused?.parked()
    this.paused?.resume()
  }

  /** Allow run() again after stop() (an operation resumed in the same process). */
  restart(): void {
    this.stopping = false
  }

  get stopped(): boolean {
    return this.stopping
  }

  /**
   * Issue no new copy until resume() or stop(). Resolves once the copies already issued are
   * done (or the job resumed, stopped or ended meanwhile): a job reported paused copies nothing.
   */
  pause(): Promise<void> {
    if (!this.paused) {
      let resume!: () => void
      let parked!: () => void
      const promise = new Promise<void>((r) => {
        resume = r
      })
      const idle = new Promise<void>((r) => {
        parked = r
      })
      this.paused = {promise, resume, idle, parked}
    }
    return this.paused.idle
  }

  resume(): void {
    const p = this.paused
    this.paused = undefined
    p?.parked()
    p?.resume()
  }

  get isPaused(): boolean {
    return this.paused !== undefined
  }

  /** Copy until nothing is left or stop(). Resolves true when complete. */
  async run(): Promise<boolean> {
    const {o} = this
    // Copies inside the kernel hold no buffer here: more of them in flight (scattered small
    // windows of a sparse source would otherwise leave the disk's queue shallow). Asked each
    // time: the engine falls back to buffers when the kernel refuses.
    const parallel = (): number => (o.parallel ?? 4) * (this.copiesInKernel ? KERNEL_FANOUT : 1)
    const perChunk = Math.max(1, Math.floor((o.chunkBytes ?? 4 * MiB) / o.extentSize))
    const inflight = new Set<Promise<void>>()
    let sinceCheckpoint = 0
    let lastCheckpoint = Date.now()
    let failure: unknown

    for (;;) {
      let cursor = 0
      let sawBusy = false
      while (!this.stopping && failure === undefined) {
        if (this.paused) {
          await Promise.all(inflight)
          this.paused?.parked()
          await this.paused?.promise
          continue
        }
        let start = this.nextCandidate(cursor)
        if (start < 0) break
        // A long hole on both sides is cleared as a range, with nothing claimed, read or written.
        // Looked for only past the data known (no await otherwise: the engine's interleaving
        // with host I/O stays as it was on volumes without holes).
        if (start * o.extentSize >= this.dataUntil) {
          const swept = await this.sweepHoles(start, perChunk)
          if (swept !== undefined) {
            cursor = swept
            continue
          }
        }
        const rate = o.limiter?.rate
        // Under --rate a chunk is at most a tenth of a second's worth (at least one extent),
        // so the limiter's bursts stay small.
        const limit = rate ? Math.max(1, Math.min(perChunk, Math.floor(rate / 10 / o.extentSize))) : perChunk
        // Unthrottled, a chunk is a window that may span short gaps (only its claimed runs are
        // read and written, all at once): scattered extents then go out many at a time.
        let end = this.clip(start, rate ? this.runEnd(start, limit) : this.windowEnd(start, limit))
        if (o.limiter && rate) {
          // Tokens first, claim after: while this waits for the limiter nothing is claimed,
          // so a host request needing these extents is served by COD at once instead of
          // waiting up to chunk/rate behind a throttled copy.
          const taken = this.byteLen(start, end)
          await o.limiter.take(taken, () => this.stopping)
          if (this.stopping || this.paused) {
            o.limiter.refund(taken)
            continue
          }
          // COD or host writes may have taken extents meanwhile: pick again, no longer.
          start = this.nextCandidate(cursor)
          if (start < 0) {
            o.limiter.refund(taken)
            break
          }
          end = this.runEnd(start, end - start)
          o.limiter.refund(taken - this.byteLen(start, end))
        }
        cursor = end
        const mine = this.claimWindow(start, end)
        if (!mine) {
          sawBusy = true
          continue
        }
        if (mine.busy) sawBusy = true
        const bytes = mine.bytes
        const p = this.copyChunk(start, end, mine.claimed, mine.blocking)
          .catch((error: unknown) => {
            failure ??= error
          })
          .finally(() => inflight.delete(p))
        inflight.add(p)
        sinceCheckpoint += bytes
        if (inflight.size >= parallel()) {
          await Promise.race(inflight)
        }
        if (o.checkpoint && sinceCheckpoint > 0 && (sinceCheckpoint >= (o.checkpointBytes ?? 256 * MiB) || Date.now() - lastCheckpoint >= (o.checkpointMs ?? 1000))) {
          sinceCheckpoint = 0
          lastCheckpoint = Date.now()
          await o.checkpoint()
        }
      }
      await Promise.all(inflight)
      if (failure !== undefined) throw failure
      if (this.stopping) return false
      // Extents busy in the COD engine, or recopied after a collision, need another pass.
      if (sawBusy) {
        await o.scoreboard.drain()
      }
      this.recount()
      if (this.progress.remainingExtents === 0) return true
      // A collision leaves bits behind us: yield a tick so the host write finishes first.
      await new Promise((r) => setTimeout(r, 1))
    }
  }

  /**
   * Sweep the hole starting at candidate `start`: when the source reads as zeros by its
   * allocation (a hole or a zero run) for at least `min` extents from there, and the
   * destination reads as zeros over the same range (known zero and not written by this run,
   * or a hole there too), the candidates of that range need no copy: their bits are cleared
   * in memory as ranges (recipe 2: durable at a later checkpoint), nothing is claimed, read or
   * written. This is what makes a 1 TiB source holding 1 GiB cost little more than the 1 GiB:
   * a claim per extent is ~1 µs, 16 s for 1 TiB of 64 KiB extents.
   *
   * Without claims, nothing may change the range between the lookups and the clear: a host
   * write to it that was in flight, or began meanwhile, is seen by a range watch of the
   * collision detector (then no sweep: the window path copies it as usual), the extents that
   * COD or this engine hold are cut off (scoreboard), protected (skip) extents keep their bits,
   * and the checks and the clear run in one tick. Returns where the sweep ended, or undefined
   * when there was nothing to sweep. Waits (the volumes' extent lookups).
   */
  private async sweepHoles(start: number, min: number): Promise<number | undefined> {
    const {o} = this
    const pos = start * o.extentSize
    if (pos < this.dataUntil) return undefined
    const count = o.map.bits.count
    const span = Math.min(o.volumeSize, pos + SWEEP_BYTES) - pos
    const endOf = (byte: number): number => (byte >= o.volumeSize ? count : Math.floor(byte / o.extentSize))
    const watch = o.collisions?.watchRange(start, endOf(pos + span) + 1)
    try {
      const src = await firstExtent(o.from, pos, span)
      if (src === undefined) return undefined
      if (src.kind === 'data') {
        // Stale only in the safe direction: a hole found later is just copied as data.
        this.dataUntil = src.offset + src.length
        // Is a hole long enough to sweep right behind this data? Then the window copying the
        // data stops there: reaching into the hole it would claim, look up and clear that
        // hole's extents one by one (48 of a 64-extent window after a 1 MiB piece), where the
        // next sweep clears them as one range.
        this.holeAt = -1
        const gap = min * o.extentSize
        if (pos + span - this.dataUntil >= gap) {
          const next = await firstExtent(o.from, this.dataUntil, gap)
          if (next?.kind === 'hole' && next.length >= gap) this.holeAt = this.dataUntil
        }
        return undefined
      }
      let end = endOf(src.offset + src.length)
      if (end - start < min) return undefined
      let destHoles = false
      if (this.written) {
        // Bounded scans: a scan to the bitmap's end per sweep costs seconds on 1 TiB.
        const w = this.written.runs(start, end).next()
        if (!w.done) end = w.value[0]
      } else {
        if (o.to.tellsHoles?.() === false) return undefined
        const dest = await firstExtent(o.to, pos, this.byteLen(start, end))
        if (dest === undefined || dest.kind === 'data') return undefined
        end = Math.min(end, endOf(dest.offset + dest.length))
        destHoles = true
      }
      // From here to the clear, one tick: no host write, COD copy or claim comes between.
      if (end - start < min || watch?.hit) return undefined
      const busy = o.scoreboard.firstBusy(start, end)
      if (busy >= 0) end = busy
      for (const c of this.collided) if (c >= start && c < end) end = c
      if (end <= start) return undefined
      const {bits} = o.map
      let cleared = 0
      const clear = (a: number, b: number): void => {
        if (b <= a) return
        o.map.clear(a, b)
        cleared += b - a
        this.progress.skippedBytes += this.byteLen(a, b)
      }
      const skip = o.skip?.()
      for (const [e, f] of bits.runs(start, end)) {
        let a = e
        // Bounded to [e, f): a scan to the skip bitmap's end per sweep would cost seconds on 1 TiB.
        if (skip)
          for (const [x, y] of skip.runs(e, f)) {
            clear(a, x)
            a = y
          }
        clear(a, f)
      }
      // A hole of the destination may be a punch not yet durable: the next checkpoint
      // fdatasyncs it before these clears become durable (recipe 5).
      if (destHoles && cleared > 0) o.onWrite?.()
      this.progress.remainingExtents = Math.max(0, this.progress.remainingExtents - cleared)
      if (cleared > 0) {
        o.onCopied?.(start, end)
        o.onReleased?.(start, end)
      }
      return end
    } finally {
      if (watch) o.collisions?.endWatch(watch)
    }
  }

  /**
   * Recount what is left (host writes set bits meanwhile). Work that appeared is added to the
   * total rather than taken from what is done: done = total - remaining never goes back, so
   * a rate computed from it is never negative.
   */
  private recount(): void {
    const left = this.remaining()
    const p = this.progress
    if (left > p.remainingExtents) p.totalExtents += left - p.remainingExtents
    p.remainingExtents = left
  }

  private isCandidate(e: number): boolean {
    return this.o.map.bits.get(e) && !(this.o.skip?.()?.get(e) ?? false) && !this.o.scoreboard.has(e)
  }

  /**
   * End of a window from `start` (a candidate): at most `max` extents, ending on a candidate,
   * crossing gaps of non-candidates of at most WINDOW_GAP extents.
   */
  private windowEnd(start: number, max: number): number {
    let end = start + 1
    let gap = 0
    for (let e = start + 1; e < this.o.map.bits.count && e - start < max; e++) {
      if (this.isCandidate(e)) {
        end = e + 1
        gap = 0
      } else if (++gap > WINDOW_GAP) break
    }
    return end
  }

  /**
   * A window [start, end) cut at the extent where the last sweep saw a long hole begin, when
   * that lies inside it; the data before it is then copied without a hole lookup, and the
   * hole is the next sweep's. Only a choice of window: every extent still gets copied or swept.
   */
  private clip(start: number, end: number): number {
    if (this.holeAt < 0) return end
    const at = Math.ceil(this.holeAt / this.o.extentSize)
    return at > start && at < end ? at : end
  }

  /** End of the run of candidates from `start` (a candidate), at most `max` extents long. */
  private runEnd(start: number, max: number): number {
    let end = start + 1
    while (end < this.o.map.bits.count && end - start < max && this.isCandidate(end)) end++
    return end
  }

  private nextCandidate(from: number): number {
    const {bits} = this.o.map
    let e = bits.nextSet(from)
    while (e >= 0 && !this.isCandidate(e)) e = bits.nextSet(e + 1)
    return e
  }

  /**
   * Claim the candidates of window [start, end) in the scoreboard (checked in this tick);
   * undefined when none could be. `busy`: a set extent in it was being copied by someone else.
   */
  private claimWindow(start: number, end: number): {claimed: Uint8Array; bytes: number; busy: boolean; blocking?: Array<[number, Promise<void>]>} | undefined {
    const claimed = new Uint8Array(end - start)
    let bytes = 0
    let busy = false
    let blocking: Array<[number, Promise<void>]> | undefined
    for (let e = start; e < end; e++) {
      if (!this.isCandidate(e)) {
        if (this.o.map.bits.get(e) && this.o.scoreboard.has(e)) busy = true
        continue
      }
      if (!this.o.scoreboard.tryClaim(e)) {
        busy = true
        continue
      }
      // A second copy after a collision blocks new writes to e (begin once the writes in
      // flight ended): an extent written all the time would collide with every copy.
      if (this.o.collisions && this.collided.has(e)) (blocking ??= []).push([e, this.o.collisions.block(e)])
      else this.o.collisions?.begin(e)
      claimed[e - start] = 1
      bytes += this.byteLen(e, e + 1)
    }
    return bytes > 0 ? {claimed, bytes, busy, blocking} : undefined
  }

  private byteLen(start: number, end: number): number {
    const from = start * this.o.extentSize
    return Math.min(end * this.o.extentSize, this.o.volumeSize) - from
  }

  /**
   * Buffers of chunkBytes, reused: a fresh 4 MiB Buffer per chunk lets RSS run ahead of GC.
   * Page-aligned, so a file volume may move them through O_DIRECT (a fresh image's writes, a
   * sparse image's reads: FileVolume decides). At most two a chunk in flight (compare reads
   * both sides).
   */
  private readonly pool: Buffer[] = []

  private buffer(): Buffer {
    return this.pool.pop() ?? alignedBuffer(this.bufferSize())
  }

  private bufferSize(): number {
    return Math.max(this.o.chunkBytes ?? 4 * MiB, this.o.extentSize)
  }

  private release(b: Buffer): void {
    this.pool.push(b)
  }

  /** buf[a, b) is all zeros. Compares in place: no Buffer views per extent. */
  private isZero(buf: Buffer, a: number, b: number): boolean {
    return buf.compare(this.zero, 0, b - a, a, b) === 0
  }

  /** Extent e's slice [a, b) of a chunk starting at extent `start`. */
  private slice(e: number, start: number, len: number): [number, number] {
    const a = (e - start) * this.o.extentSize
    return [a, Math.min(a + this.o.extentSize, len)]
  }

  /**
   * The byte ranges [a, b), relative to the window's first byte, of the runs of extents in
   * window [start, end) for which keep(e) is true.
   */
  private *runs(start: number, end: number, len: number, keep: (e: number) => boolean): Generator<[number, number]> {
    for (let e = start; e < end; ) {
      if (!keep(e)) {
        e++
        continue
      }
      let f = e + 1
      while (f < end && keep(f)) f++
      yield [this.slice(e, start, len)[0], this.slice(f - 1, start, len)[1]]
      e = f
    }
  }

  /**
   * Write the runs of extents in [start, end) for which keep(e) is true, from data. Returns
   * the bytes written.
   */
  private async writeRuns(start: number, end: number, pos: number, len: number, data: Buffer, keep: (e: number) => boolean): Promise<number> {
    let written = 0
    // The runs of one window go out together: scattered extents (a restore of a busy source)
    // would otherwise be written one at a time per window.
    const writes: Array<Promise<void>> = []
    for (const [a, b] of this.runs(start, end, len, keep)) {
      writes.push(this.o.to.write(pos + a, data.subarray(a, b)))
      written += b - a
    }
    await allOrFirstError(writes)
    return written
  }

  /**
   * Read only the claimed extents of window [start, end) into their places in buf (the rest
   * of buf is stale and never looked at: every later step tests mine(e) first), a read per
   * run, all at once. Half-dirty scattered windows (a restore after a busy day) then read half
   * the bytes.
   */
  private async readClaimed(start: number, end: number, pos: number, len: number, buf: Buffer, mine: (e: number) => boolean, vol = this.o.from): Promise<Buffer> {
    const data = buf.subarray(0, len)
    await allOrFirstError(
      [...this.runs(start, end, len, mine)].map(async ([a, b]) => {
        await vol.read(pos + a, b - a, data.subarray(a, b))
        if (vol === this.o.from) this.progress.readBytes += b - a
      }),
    )
    return data
  }

  /**
   * Make the destination read as zeros over the extents marked in `holes` (holes on the
   * source), writing only where it does not already: nothing where it is known zero and this
   * run has not written it, nothing over its own holes and zero runs; elsewhere a punch (files,
   * NBD WRITE_ZEROES) or BLKZEROOUT (block devices: zeroed, not discarded), never zeros read
   * from disk and written back. A punch is a write: it happens under this chunk's claims,
   * between the collision detector's begin and end, like the data writes. Returns the bytes
   * zeroed. Waits.
   */
  private async zeroHoles(start: number, end: number, pos: number, len: number, holes: Uint8Array): Promise<number> {
    const {to} = this.o
    const w = this.written
    const need = (e: number): boolean => holes[e - start] === 1 && !(w && !w.get(e))
    const punch = to.kind !== 'block'
    let zeroed = 0
    const writes: Array<Promise<void>> = []
    for (const [a, b] of this.runs(start, end, len, need)) {
      const dest = to.tellsHoles?.() === false ? [{offset: pos + a, length: b - a, kind: 'data'}] : await to.extents(pos + a, b - a)
      for (const r of dest) {
        if (r.kind !== 'data') continue
        writes.push(to.writeZeroes(r.offset, r.length, {punch}))
        zeroed += r.length
      }
    }
    await allOrFirstError(writes)
    return zeroed
  }

  /** A chunk's bytes written (or zeroed) are done: note the write and count them. */
  private finishCopy(claimedBytes: number, written: number, zeroed: number): void {
    if (written > 0 || zeroed > 0) this.o.onWrite?.()
    this.sinceWriteback += written
    this.progress.copiedBytes += written
    // Zeroed ranges were neither read nor copied: they count as skipped (zeros).
    this.progress.skippedBytes += claimedBytes - written
    this.progress.zeroedBytes += zeroed
  }

  /**
   * Copy the runs of window [start, end) for which mine(e) is true inside the kernel
   * (Volume.copyFrom: copy_file_range between image files), all at once; resolves to the
   * bytes copied, or undefined when the volumes cannot (nothing is then assumed copied: the caller reads and writes, and this
   * engine does not ask again). Only into a fresh image (knownZero), never comparing: there
   * nothing is to be read back, and a host's working set is not in that file's page cache.
   * Waits.
   */
  private async copyInKernel(start: number, end: number, pos: number, len: number, mine: (e: number) => boolean): Promise<number | undefined> {
    const {from, to} = this.o
    const runs = [...this.runs(start, end, len, mine)]
    const done = await Promise.allSettled(runs.map(([a, b]) => to.copyFrom!(from, pos + a, b - a)))
    const failed = done.find((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failed) throw failed.reason
    if (done.some((r) => r.status === 'fulfilled' && !r.value)) {
      this.copiesInKernel = false
      return undefined
    }
    let copied = 0
    for (const [a, b] of runs) copied += b - a
    this.progress.readBytes += copied
    for (let e = start; e < end; e++) if (mine(e)) this.written?.set(e)
    return copied
  }

  /**
   * Copy window [start, end): read and write only the extents this engine claimed
   * (claimed[e - start] = 1), the whole window in one read when it claimed all of it; the
   * others are left alone (not set, protected, or another's).
   */
  private async copyChunk(start: number, end: number, claimed: Uint8Array, blocking?: Array<[number, Promise<void>]>): Promise<void> {
    const {o} = this
    if (blocking) {
      await Promise.all(blocking.map(([, drained]) => drained))
      for (const [e] of blocking) o.collisions?.begin(e)
    }
    const pos = start * o.extentSize
    const len = this.byteLen(start, end)
    // claimed[e - start]: 0 not this copy's, 1 claimed, 2 claimed and a hole on the source.
    const mine = (e: number): boolean => claimed[e - start] !== 0
    let claimedBytes = 0
    let claimedCount = 0
    for (let e = start; e < end; e++)
      if (mine(e)) {
        claimedCount++
        claimedBytes += this.byteLen(e, e + 1)
      }
    let ok = false
    let other: Buffer | undefined
    let buf: Buffer | undefined
    try {
      // Extents the source's allocation says read as zeros (holes) are neither read nor
      // copied: the destination is only made to read as zeros where it does not already.
      // Below dataUntil the source was data when last looked at: no lookup (stale is safe).
      const allocZero = pos + len <= this.dataUntil ? undefined : await zeroExtents(o.from, pos, len, o.extentSize)
      const holes = allocZero?.some((z, i) => z === 1 && mine(start + i)) ? allocZero.map((z, i) => (z === 1 && mine(start + i) ? 1 : 0)) : undefined
      let zeroed = 0
      if (holes) {
        zeroed = await this.zeroHoles(start, end, pos, len, holes)
        for (let e = start; e < end; e++) if (holes[e - start]) claimed[e - start] = 2
      }
      const mineData = holes ? (e: number): boolean => claimed[e - start] === 1 : mine
      const whole = !holes && claimedCount === end - start
      const copied = this.copiesInKernel ? await this.copyInKernel(start, end, pos, len, mineData) : undefined
      if (copied !== undefined) this.finishCopy(claimedBytes, copied, zeroed)
      else {
        buf = this.buffer()
        let data: Buffer
        if (whole) {
          data = await o.from.read(pos, len, buf)
          this.progress.readBytes += len
        } else data = await this.readClaimed(start, end, pos, len, buf, mineData)
        let written: number
        if (o.compare) {
          // Compare-and-copy: write only the runs of extents that differ.
          other = this.buffer()
          // Only the extents compared are read (not a hole of the source: left alone above).
          const old = whole ? await o.to.read(pos, len, other) : await this.readClaimed(start, end, pos, len, other, mineData, o.to)
          written = await this.writeRuns(start, end, pos, len, data, (e) => {
            if (!mineData(e)) return false
            const [a, b] = this.slice(e, start, len)
            return data.compare(old, a, b, a, b) !== 0
          })
        } else {
          // Sparse: an all-zero extent is not written where the destination already reads as
          // zero (never written by this run on a known-zero image, or read back as zero).
          const zero = (e: number): boolean => {
            const [a, b] = this.slice(e, start, len)
            return this.isZero(data, a, b)
          }
          let zeros: boolean[] | undefined
          for (let e = start; e < end; e++)
            if (mineData(e) && zero(e)) {
              zeros ??= new Array<boolean>(end - start).fill(false)
              zeros[e - start] = true
            }
          if (!zeros && whole) {
            await o.to.write(pos, data)
            written = len
          } else if (!zeros) {
            written = await this.writeRuns(start, end, pos, len, data, mineData)
          } else {
            const z = zeros
            let destZero: (e: number) => boolean
            if (!this.written && o.to.kind === 'nbd') {
              // A remote: reading it back costs a network round trip per chunk; NBD
              // WRITE_ZEROES is cheap and keeps the remote sparse, so zero runs go as that
              // (and then read as zero: the data runs are written below).
              for (const [a, b] of this.runs(start, end, len, (e) => z[e - start])) {
                await o.to.writeZeroes(pos + a, b - a)
              }
              o.onWrite?.()
              destZero = () => true
            } else if (this.written) {
              const w = this.written
              destZero = (e) => !w.get(e)
            } else {
              other = this.buffer()
              const old = await o.to.read(pos, len, other)
              destZero = (e) => {
                const [a, b] = this.slice(e, start, len)
                return this.isZero(old, a, b)
              }
            }
            written = await this.writeRuns(start, end, pos, len, data, (e) => mineData(e) && !(z[e - start] && destZero(e)))
          }
          if (this.written) for (let e = start; e < end; e++) if (mineData(e)) this.written.set(e)
        }
        this.finishCopy(claimedBytes, written, zeroed)
      }
      ok = true
    } finally {
      if (buf) this.release(buf)
      if (other) this.release(other)
      let cleared = 0
      // Runs of extents to clear, one map call each; all in this tick, as one by one.
      let from = -1
      const clearTo = (to: number): void => {
        if (from >= 0) o.map.clear(from, to)
        from = -1
      }
      for (let e = start; e < end; e++) {
        if (!mine(e)) {
          clearTo(e)
          continue
        }
        const collided = o.collisions?.end(e) ?? false
        // Recipe 2: clear in memory only after the write completed; durable at a checkpoint.
        if (ok && !collided) {
          if (from < 0) from = e
          cleared++
        } else clearTo(e)
        if (collided) this.collided.add(e)
        else this.collided.delete(e)
        o.scoreboard.release(e)
      }
      clearTo(end)
      if (ok) {
        // A collided extent is still to copy: counting it done would make progress go back.
        this.progress.remainingExtents = Math.max(0, this.progress.remainingExtents - cleared)
        o.onCopied?.(start, end)
      }
      // Also after a failed copy: a host request may be waiting for these extents in the COD
      // queue (the COD engine skipped them while this chunk held them in S, DESIGN §4 "host
      // read": "or by waiting for the copy already in S"). Woken only on success, it would
      // wait for ever once this engine stops on the error; woken here, COD copies the extent
      // or fails the request with EIO — never wrong data, never a hang.
      o.onReleased?.(start, end)
    }
    // Early writeback (of bytes written, not skipped): this chunk keeps its slot while the
    // flush runs; the others go on.
    const dirty = o.to.pageCacheBytesWritten === undefined ? this.sinceWriteback : o.to.pageCacheBytesWritten - this.pageCacheAtWriteback
    if (dirty >= (o.writebackBytes ?? 64 * MiB)) {
      this.sinceWriteback = 0
      this.pageCacheAtWriteback = o.to.pageCacheBytesWritten ?? 0
      await o.to.flush()
    }
  }
}
