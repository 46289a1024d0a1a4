import {execFile} from 'node:child_process'
import {createHash, randomBytes} from 'node:crypto'
import {mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {promisify} from 'node:util'
import {DrillFailedError, RefusedError, StateError} from '../errors/errors.js'
import {HostIO} from '../engine/HostIO.js'
import {RestoreSession} from '../engine/Restore.js'
import {SyncEngine} from '../engine/SyncEngine.js'
import {Scoreboard} from '../engine/Scoreboard.js'
import {ExtentBitmap} from '../map/ExtentBitmap.js'
import {mulberry32} from '../io/CrashState.js'
import {GroupStore} from '../store/GroupStore.js'
import {ensureStateDir} from '../store/stateDir.js'
import {FileVolume} from '../volume/FileVolume.js'
import {checkCloneCandidate} from '../volume/identity.js'
import {openVolume} from '../volume/openVolume.js'
import type {Volume} from '../volume/Volume.js'
import {CloneGroup, type GroupContext} from './CloneGroup.js'
import {addClone, createGroup, fractureClones} from './GroupAdmin.js'
import {withGroup} from './GroupSession.js'
import {ForwardSync} from '../engine/ForwardSync.js'

const run = promisify(execFile)

export interface DrillCheck {
  name: string
  ok: boolean
  detail: string
}

export interface DrillReport {
  kind: 'scratch' | 'group'
  dir?: string
  kept: boolean
  content: 'ext4' | 'random' | 'clone'
  sizeBytes: number
  /** From the restore's start to the first host read answered (COD included). */
  timeToFirstHostIoMs?: number
  restoreMs: number
  throughputMBps: number
  codCopies: number
  bytesCopied: number
  hostReads: number
  hostWrites: number
  checks: DrillCheck[]
  ok: boolean
}

async function sha256(v: Volume): Promise<string> {
  const h = createHash('sha256')
  const chunk = 4 * 1024 * 1024
  for (let off = 0; off < v.size; off += chunk) {
    // eslint-disable-next-line no-await-in-loop
    h.update(await v.read(off, Math.min(chunk, v.size - off)))
  }
  return h.digest('hex')
}

async function have(cmd: string): Promise<boolean> {
  try {
    await run('sh', ['-c', `command -v ${cmd}`])
    return true
  } catch {
    return false
  }
}

/** A source with real content: an ext4 file system (mke2fs -d) where e2fsprogs exists, random data otherwise. */
async function makeSource(dir: string, size: number): Promise<'ext4' | 'random'> {
  const img = join(dir, 'source.img')
  if (await have('mke2fs')) {
    const tree = join(dir, 'tree')
    await mkdir(join(tree, 'db'), {recursive: true})
    for (let i = 0; i < 24; i++) await writeFile(join(tree, 'db', `table${i}.dat`), randomBytes(256 * 1024 + i * 1000))
    await writeFile(join(tree, 'README'), 'clonectl recovery drill\n')
    await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, img, `${Math.floor(size / 1024)}k`])
    await rm(tree, {recursive: true, force: true})
    return 'ext4'
  }
  await writeFile(img, randomBytes(size))
  return 'random'
}


export interface ScratchDrillOptions {
  keep?: boolean
  sizeBytes?: number
  seed?: number
  log?: (m: string) => void
}

/**
 * The self-contained drill: scratch images in a temp dir, a clone synced and fractured, the
 * source damaged through the host path, a protected restore while an in-process workload
 * reads and writes, then checks against a byte model. Throws DrillFailedError (with the
 * report) when any check fails. Waits.
 */
export async function scratchDrill(o: ScratchDrillOptions = {}): Promise<DrillReport> {
  const size = o.sizeBytes ?? 64 * 1024 * 1024
  const dir = await mkdtemp(join(tmpdir(), 'clonectl-drill-'))
  const log = o.log ?? (() => undefined)
  const random = mulberry32(o.seed ?? Date.now())
  try {
    const {nodeFs} = await import('../io/NodeDurableFs.js')
    const state = join(dir, 'state')
    await ensureStateDir(nodeFs, state)
    const ctx: GroupContext = {fs: nodeFs, store: new GroupStore(nodeFs, state)}
    const content = await makeSource(dir, size)
    log(`drill: ${content} source of ${size} bytes in ${dir}`)
    await createGroup(ctx, {name: 'drill', sourcePath: join(dir, 'source.img'), extentSize: 64 * 1024})
    const cloneHash = await withGroup(ctx, 'drill', {command: 'clonectl drill'}, async (g) => {
      await addClone(g, {clone: 'golden', path: join(dir, 'golden.img'), create: true})
      const fs = await ForwardSync.start(g, {clone: 'golden', command: 'clonectl drill'})
      if (fs instanceof ForwardSync) await fs.run()
      await fractureClones(g, ['golden'])
      return sha256(g.member('golden').vol)
    })
    log('drill: clone synced and fractured')

    return await withGroup(ctx, 'drill', {command: 'clonectl drill', open: {writable: true, readOnlyClones: ['golden']}}, async (g) => {
      const host = new HostIO(g)
      const extent = g.extentSize
      const model = await g.src.read(0, size)
      // Damage: a tenth of the extents overwritten through the host path (an application gone bad).
      for (let i = 0; i < Math.floor(g.extentCount / 10); i++) {
        const e = Math.floor(random() * g.extentCount)
        const junk = randomBytes(extent)
        // eslint-disable-next-line no-await-in-loop
        await host.write(e * extent, junk, false)
      }
      await host.flush()
      // What the source must hold after the restore: the clone, plus the workload's writes.
      const golden = g.member('golden').vol
      ;(await golden.read(0, size)).copy(model)

      const t0 = performance.now()
      // Paced to last ~1.5 s, so the workload really runs against a restore in progress.
      const toCopy = g.member('golden').map.bits.countSet() * extent
      const rate = Math.max(1 << 20, Math.floor(toCopy / 1.5))
      const session = await host.gate.exclusive(() => RestoreSession.start(g, {clone: 'golden', protected: true, rate, command: 'clonectl drill'}))
      host.restore = session
      let firstIo: number | undefined
      let reads = 0
      let writes = 0
      const mismatches: string[] = []
      const restore = session.run()
      let running = true
      void restore.finally(() => {
        running = false
      })
      const workload = (async () => {
        let n = 0
        while (running || n < 64) {
          const off = Math.floor(random() * (size - 65536))
          const len = 512 * (1 + Math.floor(random() * 128))
          if (random() < 0.7) {
            // eslint-disable-next-line no-await-in-loop
            const got = await host.read(off, len)
            firstIo ??= performance.now() - t0
            reads++
            if (!got.equals(model.subarray(off, off + len))) mismatches.push(`read at ${off}+${len}`)
          } else {
            const data = randomBytes(len)
            // eslint-disable-next-line no-await-in-loop
            await host.write(off, data, random() < 0.1)
            data.copy(model, off)
            writes++
          }
          n++
          if (n % 50 === 0) {
            // eslint-disable-next-line no-await-in-loop
            await host.flush()
            // eslint-disable-next-line no-await-in-loop
            await new Promise((r) => setImmediate(r))
          }
        }
      })()
      const [complete] = await Promise.all([restore, workload])
      if (!complete) throw new StateError('the drill restore stopped before completing')
      await host.gate.exclusive(() => session.finish())
      host.restore = undefined
      const restoreMs = performance.now() - t0
      const summary = session.summary(true)
      log(`drill: restore completed in ${restoreMs.toFixed(0)} ms`)

      const checks: DrillCheck[] = []
      const final = await g.src.read(0, size)
      checks.push({name: 'host reads saw restored or newly written data', ok: mismatches.length === 0, detail: mismatches.length ? `${mismatches.length} mismatches, first ${mismatches[0]}` : `${reads} reads`})
      checks.push({name: 'source equals clone + writes made during the restore', ok: final.equals(model), detail: final.equals(model) ? 'byte for byte' : 'differs'})
      const after = await sha256(golden)
      checks.push({name: 'clone unchanged (sha256)', ok: after === cloneHash, detail: after.slice(0, 16)})
      const D = g.member('golden').map.bits
      const c = await golden.read(0, size)
      let uncovered = 0
      for (let e = 0; e < g.extentCount; e++) {
        const a = e * extent
        const b = Math.min(a + extent, size)
        if (final.compare(c, a, b, a, b) !== 0 && !D.get(e)) uncovered++
      }
      checks.push({name: "clone's delta map covers every difference", ok: uncovered === 0, detail: `${D.countSet()} extents marked, ${uncovered} uncovered`})
      if (content === 'ext4' && (await have('e2fsck'))) {
        try {
          await run('e2fsck', ['-fn', golden.path])
          checks.push({name: 'e2fsck -fn of the clone', ok: true, detail: 'clean'})
        } catch (error) {
          checks.push({name: 'e2fsck -fn of the clone', ok: false, detail: String((error as {stdout?: string}).stdout ?? error).split('\n')[0]})
        }
      }
      const report: DrillReport = {
        kind: 'scratch',
        dir: o.keep ? dir : undefined,
        kept: Boolean(o.keep),
        content,
        sizeBytes: size,
        timeToFirstHostIoMs: firstIo,
        restoreMs,
        throughputMBps: summary.copiedBytes / 1e6 / (restoreMs / 1000),
        codCopies: summary.codCopies,
        bytesCopied: summary.copiedBytes,
        hostReads: reads,
        hostWrites: writes,
        checks,
        ok: checks.every((x) => x.ok),
      }
      return report
    })
  } finally {
    if (!o.keep) await rm(dir, {recursive: true, force: true})
  }
}

export interface GroupDrillOptions {
  group: string
  clone: string
  target: string
  exec?: string
  command: string
  waitSeconds?: number
  force?: boolean
  log?: (m: string) => void
}

/**
 * Drill a real group without touching its source: copy the clone into a scratch target (a
 * restore rehearsal), check the target against the clone, run CMD with {} replaced by the
 * target. Holds the group lock so the clone cannot change meanwhile. Waits.
 */
export async function groupDrill(ctx: GroupContext, o: GroupDrillOptions): Promise<DrillReport> {
  return withGroup(ctx, o.group, {command: o.command, waitSeconds: o.waitSeconds, open: {writable: false}}, async (g) => {
    const m = g.member(o.clone)
    if (m.state !== 'fractured' && m.state !== 'synchronized' && !o.force)
      throw new StateError(`clone ${m.name} is ${m.state}, not a point-in-time copy to drill`, 'sync and fracture it first, or pass --force')
    const used = await ctx.store.allClonePaths()
    const exists = await ctx.fs.exists(o.target)
    if (exists) await checkCloneCandidate(ctx.fs, g.record.source.path, o.target, used)
    else await FileVolume.createSparse(ctx.fs, o.target, g.volumeSize)
    const target = await openVolume(ctx.fs, o.target, {write: true})
    try {
      if (target.size < g.volumeSize) throw new RefusedError(`target ${o.target} (${target.size} bytes) is smaller than the group's volumes (${g.volumeSize} bytes)`)
      if (!exists) target.knownZero = true
      const all = new ExtentBitmap(g.extentCount)
      all.setAll()
      const map = {bits: all, clear: (s: number, e: number) => all.clearRange(s, e)}
      const t0 = performance.now()
      const engine = new SyncEngine({map, from: m.vol, to: target, extentSize: g.extentSize, volumeSize: g.volumeSize, scoreboard: new Scoreboard()})
      await engine.run()
      await target.flush()
      const restoreMs = performance.now() - t0
      o.log?.(`drill: clone ${m.name} copied to ${o.target} in ${restoreMs.toFixed(0)} ms`)
      const checks: DrillCheck[] = []
      const chunk = 4 * 1024 * 1024
      let same = true
      for (let off = 0; off < g.volumeSize && same; off += chunk) {
        const n = Math.min(chunk, g.volumeSize - off)
        // eslint-disable-next-line no-await-in-loop
        const [a, b] = await Promise.all([m.vol.read(off, n), target.read(off, n)])
        same = a.equals(b)
      }
      checks.push({name: 'target equals the clone', ok: same, detail: same ? 'byte for byte' : 'differs'})
      if (o.exec) {
        const cmd = o.exec.replace(/\{\}/g, `'${o.target.replace(/'/g, "'\\''")}'`)
        try {
          const {stdout} = await run('sh', ['-c', cmd], {maxBuffer: 16 * 1024 * 1024})
          checks.push({name: `exec: ${o.exec}`, ok: true, detail: stdout.trim().split('\n').slice(-1)[0] ?? ''})
        } catch (error) {
          const e = error as {code?: number; stdout?: string; stderr?: string}
          checks.push({name: `exec: ${o.exec}`, ok: false, detail: `exit ${e.code ?? '?'}: ${(e.stderr || e.stdout || '').trim().split('\n')[0] ?? ''}`})
        }
      }
      return {
        kind: 'group',
        kept: true,
        content: 'clone',
        sizeBytes: g.volumeSize,
        restoreMs,
        throughputMBps: engine.progress.copiedBytes / 1e6 / (restoreMs / 1000),
        codCopies: 0,
        bytesCopied: engine.progress.copiedBytes,
        hostReads: 0,
        hostWrites: 0,
        checks,
        ok: checks.every((x) => x.ok),
      }
    } finally {
      await target.close()
    }
  })
}

export function assertDrill(r: DrillReport): void {
  if (!r.ok) {
    const bad = r.checks.filter((c) => !c.ok)
    throw new DrillFailedError(`recovery drill failed: ${bad.map((c) => `${c.name} (${c.detail})`).join('; ')}`, 'keep the scratch files with --keep and inspect them, or report it')
  }
}

export {CloneGroup}
