/**
 * Tests wait on state, never on a fixed delay: a loaded CI machine stretches every delay.
 * waitFor polls a predicate (a record, a counter, a socket, a file, a log line) until it holds.
 */
import {setTimeout as tick} from 'node:timers/promises'

/**
 * Resolve with the first truthy value of `probe`, polling every `everyMs`; reject naming
 * `what` after `timeoutMs` (a hang guard, generous: it never paces a passing test).
 * A probe that throws is taken as "not yet".
 */
export async function waitFor<T>(probe: () => T | Promise<T>, what: string, timeoutMs = 30_000, everyMs = 10): Promise<NonNullable<T>> {
  const end = Date.now() + timeoutMs
  let last: unknown
  for (;;) {
    try {
      const v = await probe()
      if (v) return v as NonNullable<T>
    } catch (error) {
      last = error
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last instanceof Error ? ` (last probe error: ${last.message})` : ''}`)
    await tick(everyMs)
  }
}
