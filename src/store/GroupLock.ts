import {readFile, rm, writeFile} from 'node:fs/promises'
import {hostname} from 'node:os'
import {join} from 'node:path'
import lockfile from 'proper-lockfile'
import {LockHeldError} from '../errors/errors.js'

export interface HolderInfo {
  pid: number
  command: string
  startedAt: string
  hostname: string
}

/*
 * One lock per group (a directory made atomically by proper-lockfile). Every invocation uses
 * the same `stale` (60 s): a holder refreshes its lock's mtime every `update` (10 s), so a
 * lock older than a minute belongs to a process that is gone or whose event loop has been
 * blocked that long — which the engine never does (DESIGN §3). On top of that, a holder file
 * names the pid, command and start time: a lock whose holder pid is dead on this host is
 * taken over at once instead of after a minute (a SIGKILLed restore resumes immediately).
 */
const STALE_MS = 60_000
const UPDATE_MS = 10_000

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as {code?: string}).code === 'EPERM'
  }
}

export interface AcquireOptions {
  groupDir: string
  group: string
  command: string
  /** undefined: fail fast; seconds to wait (Infinity: forever). */
  waitSeconds?: number
  onCompromised: (err: Error) => void
  onStaleTakeover?: (holder: HolderInfo) => void
}

export class GroupLock {
  private constructor(
    private readonly groupDir: string,
    private readonly releaseFn: () => Promise<void>,
    readonly holder: HolderInfo,
  ) {}

  static lockPath(groupDir: string): string {
    return join(groupDir, 'lock')
  }

  static holderPath(groupDir: string): string {
    return join(groupDir, 'lock.holder.json')
  }

  private static async readHolder(groupDir: string): Promise<HolderInfo | undefined> {
    try {
      return JSON.parse(await readFile(GroupLock.holderPath(groupDir), 'utf8')) as HolderInfo
    } catch {
      return undefined
    }
  }

  /** Who holds the lock, if a live process does. Does not take it. */
  static async inspect(groupDir: string): Promise<HolderInfo | undefined> {
    const locked = await lockfile.check(groupDir, {stale: STALE_MS, realpath: false, lockfilePath: GroupLock.lockPath(groupDir)}).catch(() => false)
    if (!locked) return undefined
    const h = await GroupLock.readHolder(groupDir)
    if (h && h.hostname === hostname() && !alive(h.pid)) return undefined
    return h ?? {pid: 0, command: '(unknown)', startedAt: '(unknown)', hostname: '(unknown)'}
  }

  /** Take the group lock: fail fast, or wait up to waitSeconds. Waits. */
  static async acquire(o: AcquireOptions): Promise<GroupLock> {
    const deadline = o.waitSeconds === undefined ? 0 : Date.now() + o.waitSeconds * 1000
    for (;;) {
      try {
        // eslint-disable-next-line no-await-in-loop
        const release = await lockfile.lock(o.groupDir, {
          stale: STALE_MS,
          update: UPDATE_MS,
          retries: 0,
          realpath: false,
          lockfilePath: GroupLock.lockPath(o.groupDir),
          onCompromised: o.onCompromised,
        })
        const holder: HolderInfo = {pid: process.pid, command: o.command, startedAt: new Date().toISOString(), hostname: hostname()}
        // eslint-disable-next-line no-await-in-loop
        await writeFile(GroupLock.holderPath(o.groupDir), JSON.stringify(holder), {mode: 0o600})
        return new GroupLock(o.groupDir, release, holder)
      } catch (error) {
        if ((error as {code?: string}).code !== 'ELOCKED') throw error
      }
      // eslint-disable-next-line no-await-in-loop
      const h = await GroupLock.readHolder(o.groupDir)
      if (h && h.hostname === hostname() && h.pid !== process.pid && !alive(h.pid)) {
        // The holder was killed: take over now (the mkdir in lock() stays the atomic step
        // between two takers; the loser sees ELOCKED from the winner's fresh lock).
        o.onStaleTakeover?.(h)
        // eslint-disable-next-line no-await-in-loop
        await rm(GroupLock.lockPath(o.groupDir), {recursive: true, force: true})
        // eslint-disable-next-line no-await-in-loop
        await rm(GroupLock.holderPath(o.groupDir), {force: true})
        continue
      }
      if (Date.now() >= deadline) {
        const who = h ? `pid ${h.pid} (${h.command}) since ${h.startedAt}` : 'another clonectl'
        throw new LockHeldError(`group ${o.group} is locked by ${who}`)
      }
      // eslint-disable-next-line no-await-in-loop
      await new Promise((r) => setTimeout(r, Math.min(250, Math.max(10, deadline - Date.now()))))
    }
  }

  /** Release the lock and remove the holder file. Waits. */
  async release(): Promise<void> {
    await rm(GroupLock.holderPath(this.groupDir), {force: true})
    await this.releaseFn()
  }
}
