import {ClonectlError} from '../errors/errors.js'
import {GroupLock} from '../store/GroupLock.js'
import {CloneGroup, type GroupContext, type OpenOptions} from './CloneGroup.js'
import {recoverStale} from './GroupAdmin.js'

export interface SessionOptions {
  command: string
  /** undefined: fail fast on a held lock; a number of seconds (Infinity allowed) to wait. */
  waitSeconds?: number
  open?: OpenOptions
  /** Aborted when the lock is compromised (stop at a safe point, exit non-zero). */
  abort?: AbortController
}

export class LockLostError extends ClonectlError {
  constructor(group: string, detail: string) {
    super('LOCK_LOST', 'lockHeld', `lost the lock of group ${group}: ${detail}; stopped at a safe point`, 'check that no other clonectl runs on this group, then run the command again')
  }
}

/**
 * Run fn on a group opened writable under its lock: acquire (fail fast or wait), open, mark
 * the session durably, run, close (checkpoint, fingerprints, save), release. A compromised
 * lock aborts the operation; the on-disk state is crash-safe either way. Waits.
 */
export async function withGroup<T>(ctx: GroupContext, name: string, opts: SessionOptions, fn: (g: CloneGroup) => Promise<T>): Promise<T> {
  await ctx.store.load(name) // NotFoundError before any lock directory is made
  let compromised: Error | undefined
  const lock = await GroupLock.acquire({
    groupDir: ctx.store.groupDir(name),
    group: name,
    command: opts.command,
    waitSeconds: opts.waitSeconds,
    onCompromised: (err) => {
      compromised = err
      opts.abort?.abort(err)
    },
    onWait: ctx.waiting,
    onStaleTakeover: (holder) => ctx.warn?.(`took over the lock of group ${name} left by pid ${holder.pid} (${holder.command}), which is no longer running`),
  })
  try {
    const g = await CloneGroup.open(ctx, name, opts.open ?? {writable: true})
    let ok = false
    try {
      if (g.writable) {
        await recoverStale(g)
        await g.beginSession(opts.command)
      }
      const out = await fn(g)
      ok = true
      return out
    } finally {
      await g.close({save: true}).catch((error: unknown) => {
        if (ok) throw error
      })
    }
  } finally {
    await lock.release().catch(() => undefined)
    // eslint-disable-next-line no-unsafe-finally -- a lost lock overrides the result: the operation ran without it
    if (compromised) throw new LockLostError(name, compromised.message)
  }
}
