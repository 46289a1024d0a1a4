import type {ProgressEvent} from '../group/GroupOperations.js'
import {humanBytes, humanDuration, humanRate} from './format.js'
import {stderrIsLive} from './terminal.js'

/**
 * Draws copy progress on stderr: a live bar with %, MB/s and ETA on a terminal, and plain
 * periodic lines otherwise (cron logs, pipes), never escape codes there.
 */
export class ProgressRenderer {
  private readonly live = stderrIsLive()
  private lastPlain = 0
  private samples: Array<{t: number; done: number}> = []
  private drawn = false
  /** Plain output: when the first update came, and the last line not yet printed. */
  private firstAt?: number
  private pending?: string

  constructor(
    private readonly plainEveryMs = 5000,
    private readonly out: NodeJS.WriteStream = process.stderr,
  ) {}

  update(p: ProgressEvent): void {
    const now = Date.now()
    // Work can appear while copying (host writes under `serve`): a count that went back
    // starts the rate window again rather than showing a negative rate.
    const last = this.samples.at(-1)
    if (last && p.doneBytes < last.done) this.samples = []
    this.samples.push({t: now, done: p.doneBytes})
    while (this.samples.length > 2 && now - this.samples[0].t > 5000) this.samples.shift()
    const first = this.samples[0]
    const dt = (now - first.t) / 1000
    const rate = dt > 0.2 ? Math.max(0, p.doneBytes - first.done) / dt : Number.NaN
    const pct = p.totalBytes > 0 ? (100 * p.doneBytes) / p.totalBytes : 100
    const eta = rate > 0 ? ((p.totalBytes - p.doneBytes) / rate) * 1000 : Number.POSITIVE_INFINITY
    const speed = Number.isNaN(rate) ? '' : `  ${humanRate(rate)}  ETA ${humanDuration(eta)}`
    const what = `${p.operation} ${p.group}/${p.clone}`
    const extra = `${p.codCopies ? `  COD ${p.codCopies}` : ''}${p.paused ? '  (paused)' : ''}`
    if (this.live) {
      const width = 28
      const fill = Math.round((width * pct) / 100)
      const bar = '█'.repeat(fill) + '░'.repeat(width - fill)
      this.out.write(`\r\u001B[2K${what} ${bar} ${pct.toFixed(1).padStart(5)}%${speed}${extra}`)
      this.drawn = true
    } else {
      // A log gets no line for a job done within a second (its result line says it all),
      // then one per interval, and at the end the last state (see done()).
      this.firstAt ??= now
      const line = `${what}: ${pct.toFixed(1)}% ${humanBytes(p.doneBytes)}/${humanBytes(p.totalBytes)}${speed}${extra}\n`
      if (now - this.firstAt >= Math.min(1000, this.plainEveryMs) && now - this.lastPlain >= this.plainEveryMs) {
        this.lastPlain = now
        this.drawn = true
        this.pending = undefined
        this.out.write(line)
      } else this.pending = line
    }
  }

  /** The job ended: clear the bar; in a log, end with where it got to ("100.0%") if not printed yet. */
  done(): void {
    if (this.live && this.drawn) this.out.write('\r\u001B[2K')
    if (!this.live && this.drawn && this.pending) this.out.write(this.pending)
    this.pending = undefined
    this.drawn = false
  }
}
