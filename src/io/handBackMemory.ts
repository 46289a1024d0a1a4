/**
 * Memory handed back to the kernel after a burst (issue 13 item 1: serve stayed at ~350 MiB
 * RSS after hostile clients left). Two things keep a burst resident once its buffers are
 * dropped:
 * - V8 frees an ArrayBuffer's memory only when a GC collects the ArrayBuffer, and after a
 *   burst nothing allocates, so no GC comes: a full GC is asked for.
 * - glibc keeps the pages of freed chunks inside its heaps (a WRITE payload arrives as
 *   thousands of 64 KiB socket reads; freed, they leave holes below live data that no
 *   automatic trim reaches): malloc_trim(0) gives them back, through koffi (kernel.ts).
 * Either is skipped, silently, where it cannot be had (koffi missing: kernel() warned once).
 */
import {setImmediate as nextTurn} from 'node:timers/promises'
import {setFlagsFromString} from 'node:v8'
import {runInNewContext} from 'node:vm'
import {kernel} from '../volume/kernel.js'

let collect: (() => void) | null | undefined

/** V8's gc(), without starting Node with --expose-gc (jest's leak detector does the same); null when unavailable. */
function gcFunction(): (() => void) | null {
  if (collect !== undefined) return collect
  try {
    setFlagsFromString('--expose-gc')
    const fn = runInNewContext('gc') as unknown
    collect = typeof fn === 'function' ? (fn as () => void) : null
  } catch {
    collect = null
  }
  return collect
}

export interface HandBack {
  /** A full GC ran. */
  collected: boolean
  /** malloc_trim(0) ran (and whether it found anything to give back). */
  trimmed: boolean | undefined
}

/**
 * A full GC now; false when gc() cannot be had. For a burst's buffers just dropped (a
 * connection closed holding many): freed now, before the bytes they held are handed out
 * again, so garbage and its replacement are not resident together.
 */
export function collectGarbage(): boolean {
  const gc = gcFunction()
  gc?.()
  return gc !== null
}

/** A full GC, then (once V8 has freed what it collected) malloc_trim(0). */
export async function handBackMemory(): Promise<HandBack> {
  const gc = gcFunction()
  gc?.()
  // The collected ArrayBuffers' memory is freed by V8's sweeper; give it a turn first.
  await nextTurn()
  return {collected: gc !== null, trimmed: kernel()?.mallocTrim?.()}
}
