/**
 * npm run bench [-- --quick]: clonectl side by side with the tools an administrator would
 * otherwise use (nbdcopy, dd, qemu-nbd, nbdkit), same files, same run, alternating, reported
 * as median ratios with pass marks. The full run writes BENCHMARKS.md and an SVG timeline of
 * host IOPS and restore progress during a protected restore. --quick shrinks everything so
 * the harness runs in CI in a few minutes (marks are printed, not enforced).
 */
import {writeFileSync, readFileSync, existsSync, rmSync} from 'node:fs'
import {cpus, totalmem, release, tmpdir} from 'node:os'
import {join} from 'node:path'
import {controlRequest} from '../src/control/ControlClient.js'
import {dirtyExtents} from './dirty.js'
import {mirrorRows} from './mirror.js'
import {alternate, allocatedBytes, background, bin, clonectl, fio, fioAsync, freshDir, have, Qmp, repo, settle, sh, stats, stop, timed, timedOutput, type Stats} from './harness.js'

const quick = process.argv.includes('--quick')
/** The value after `--name`, if any. */
function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? process.argv[i + 1] : undefined
}
/**
 * --only ROW[,ROW]: run only these rows (full, incremental, sparse, restore, remote, first-read,
 * fio, memory, mirror), e.g. to profile one. incremental and restore run on the full row's clone, made
 * untimed when full is not selected. Only the full, unfiltered run writes BENCHMARKS.md.
 */
const ROWS = ['full', 'incremental', 'sparse', 'restore', 'remote', 'first-read', 'fio', 'memory', 'mirror'] as const
const only = arg('only')?.split(',')
for (const r of only ?? []) if (!(ROWS as readonly string[]).includes(r)) throw new Error(`--only: unknown row ${r} (rows: ${ROWS.join(', ')})`)
const want = (r: (typeof ROWS)[number]): boolean => !only || only.includes(r)
const MiB = 1024 * 1024
const GiB = 1024 * MiB
/** --size MiB and --runs N override the copy rows' size and the runs per pair. */
const SIZE = arg('size') ? Number(arg('size')) * MiB : quick ? 128 * MiB : 2 * GiB
const RUNS = arg('runs') ? Number(arg('runs')) : quick ? 1 : 3
const FIO_SECONDS = quick ? 3 : 15
const base = freshDir(process.env.CLONECTL_BENCH_DIR ?? tmpdir(), 'clonectl-bench')

interface Row {
  row: string
  clonectl: string
  peer: string
  ratio: number
  ratioText: string
  mark: string
  pass: boolean | undefined
  note?: string
}
const rows: Row[] = []
const commands: string[] = []

function fmt(s: Stats, unit = 's', digits = 2): string {
  return `${s.median.toFixed(digits)} ${unit} (min ${s.min.toFixed(digits)}, max ${s.max.toFixed(digits)})`
}

function record(r: Row): void {
  rows.push(r)
  const verdict = r.pass === undefined ? 'n/a' : r.pass ? 'PASS' : 'MISS'
  process.stdout.write(`${verdict.padEnd(4)} ${r.row}: clonectl ${r.clonectl} | ${r.peer} | ratio ${r.ratioText} (mark ${r.mark})${r.note ? ` — ${r.note}` : ''}\n`)
}

function skip(row: string, why: string): void {
  record({row, clonectl: '-', peer: '-', ratio: Number.NaN, ratioText: '-', mark: '-', pass: undefined, note: `skipped: ${why}`})
}

function makeRandom(path: string, size: number): void {
  sh(`head -c ${size} /dev/urandom > ${path}`)
}

function makeSparse(path: string, size: number, dataFraction: number): void {
  sh(`rm -f ${path}; truncate -s ${size} ${path}`)
  const blocks = size / MiB
  const n = Math.floor(blocks * dataFraction)
  const step = Math.floor(blocks / Math.max(n, 1))
  for (let i = 0; i < n; i++) sh(`dd if=/dev/urandom of=${path} bs=1M count=1 seek=${i * step} conv=notrunc status=none`)
}

// ---- rows ------------------------------------------------------------------------------

/**
 * Full sync into a remote clone: the same random file into the same qemu-nbd export (unix
 * socket, default cache), clonectl's `clone sync` against `nbdcopy --flush`, alternately.
 * Then an incremental sync with 1% of extents dirty, against the full one.
 */
async function remoteRows(): Promise<void> {
  if (!have('qemu-nbd')) return skip('remote clone rows', 'install qemu-utils (qemu-nbd)')
  const dir = freshDir(base, 'remote')
  const src = join(dir, 'src.img')
  const exp = join(dir, 'export.img')
  const sock = join(dir, 'q.sock')
  makeRandom(src, SIZE)
  sh(`truncate -s ${SIZE} ${exp}`)
  const uri = `nbd+unix:///c?socket=${sock}`
  const q = await background(`qemu-nbd -f raw -t -x c -k ${sock} ${exp}`, sock)
  const state = join(dir, 'state')
  try {
    clonectl(state, `group create g --source ${src}`)
    const cmd = `node ${bin} clone sync g r`
    commands.push(`qemu-nbd -f raw -t -x c -k SOCK export.img`, `clonectl clone add g r --path 'nbd+unix:///c?socket=SOCK' --no-sync; ${cmd}`, `nbdcopy --flush ${src} '${uri}'`)
    const own: number[] = []
    const r = alternate(
      RUNS,
      () => {
        const t = timedOutput(`${cmd} --json --state-dir=${state}`)
        own.push(syncSeconds(t.stdout))
        return t.seconds
      },
      () => timed(`nbdcopy --flush ${src} '${uri}'`),
      (w) => {
        sh(`dd if=/dev/zero of=${exp} bs=1M count=1 conv=notrunc status=none`)
        if (w === 'a') {
          sh(`node ${bin} clone remove g r --yes --state-dir=${state} >/dev/null 2>&1 || true`)
          clonectl(state, `clone add g r --path '${uri}' --no-sync`)
        }
      },
    )
    const ratio = r.b.median / r.a.median
    record({row: `full sync to a remote clone (qemu-nbd, unix socket), ${SIZE / MiB} MiB random`, clonectl: fmt(r.a), peer: `nbdcopy --flush into the same export ${fmt(r.b)}`, ratio, ratioText: `${ratio.toFixed(2)}× nbdcopy throughput`, mark: '≥ 0.8', pass: ratio >= 0.8})
    // Incremental: 1% of the extents changed (with dd, behind clonectl's back, so
    // `verify --repair` then makes the map exact and trusted), then a sync of just those.
    clonectl(state, `clone fracture g r`)
    const extents = SIZE / (64 * 1024)
    const n = Math.max(1, Math.floor(extents / 100))
    const inc: number[] = []
    const incOwn: number[] = []
    for (let i = 0; i < RUNS; i++) {
      for (let k = 0; k < n; k++) sh(`dd if=/dev/urandom of=${src} bs=64K count=1 seek=${Math.floor((k * extents) / n)} conv=notrunc status=none`)
      sh(`node ${bin} verify g r --repair --state-dir=${state} >/dev/null 2>&1 || true`)
      settle()
      const t = timedOutput(`${cmd} --json --state-dir=${state}`)
      inc.push(t.seconds)
      incOwn.push(syncSeconds(t.stdout))
      clonectl(state, `clone fracture g r`)
    }
    // As the local incremental row: the syncs' own times, the whole commands' beside them.
    const fullOwn = stats(own).median
    const ri = stats(incOwn).median / fullOwn
    const riWall = stats(inc).median / r.a.median
    record({
      row: 'incremental sync to a remote clone, 1% of extents dirty',
      clonectl: `the sync's own time ${fmt(stats(incOwn), 's', 3)}; the whole command ${fmt(stats(inc))}`,
      peer: `the full sync's own time ${fullOwn.toFixed(2)} s; the whole command ${fmt(r.a)}`,
      ratio: ri,
      ratioText: `${ri.toFixed(3)} (whole commands: ${riWall.toFixed(3)})`,
      mark: '≤ 0.05',
      pass: ri <= 0.05,
    })
  } finally {
    await stop(q)
    rmSync(dir, {recursive: true, force: true})
  }
}

/** A sync's own time (SyncSummary.elapsedMs, in seconds) from a command's --json output. */
function syncSeconds(stdout: string): number {
  const out = JSON.parse(stdout) as {elapsedMs?: number; sync?: {elapsedMs: number}}
  const ms = out.sync?.elapsedMs ?? out.elapsedMs
  if (typeof ms !== 'number') throw new Error(`no elapsedMs in ${stdout.slice(0, 200)}`)
  return ms / 1000
}

function fullAndIncremental(): {state: string; dir: string; own: number} {
  const dir = freshDir(base, 'full')
  const src = join(dir, 'src.img')
  makeRandom(src, SIZE)
  let state = ''
  const cmd = `node ${bin} clone add g c --path ${dir}/c.img --create`
  commands.push(cmd, `nbdcopy --flush ${src} nc.img`, `dd if=${src} of=dd.img bs=4M conv=fdatasync`)
  const own: number[] = []
  const r = alternate(
    RUNS,
    () => {
      const t = timedOutput(`${cmd} --json --state-dir=${state}`)
      own.push(syncSeconds(t.stdout))
      return t.seconds
    },
    () => timed(`nbdcopy --flush ${src} ${dir}/nc.img`),
    (w) => {
      if (w === 'a') {
        state = join(dir, 'state')
        rmSync(state, {recursive: true, force: true})
        rmSync(join(dir, 'c.img'), {force: true})
        clonectl(state, `group create g --source ${src}`)
      } else {
        sh(`rm -f ${dir}/nc.img; truncate -s ${SIZE} ${dir}/nc.img`)
      }
    },
  )
  const dd: number[] = []
  for (let i = 0; i < RUNS; i++) {
    sh(`rm -f ${dir}/dd.img`)
    settle()
    dd.push(timed(`dd if=${src} of=${dir}/dd.img bs=4M conv=fdatasync status=none`))
  }
  sh(`rm -f ${dir}/dd.img ${dir}/nc.img`)
  const ratio = r.b.median / r.a.median
  const ownMedian = stats(own).median
  record({row: `full sync, ${SIZE / MiB} MiB random`, clonectl: `${fmt(r.a)} (the sync's own time ${ownMedian.toFixed(2)} s)`, peer: `nbdcopy --flush ${fmt(r.b)}; dd ${fmt(stats(dd))}`, ratio, ratioText: `${ratio.toFixed(2)}× nbdcopy throughput, ${(stats(dd).median / r.a.median).toFixed(1)}× dd`, mark: '≥ 0.7', pass: ratio >= 0.7})
  return {state, dir, own: ownMedian}
}

/** The full row's clone without timing it (for --only incremental/restore). */
function untimedFull(): {state: string; dir: string; own: number} {
  const dir = freshDir(base, 'full')
  const src = join(dir, 'src.img')
  makeRandom(src, SIZE)
  const state = join(dir, 'state')
  clonectl(state, `group create g --source ${src}`)
  settle()
  const own = syncSeconds(clonectl(state, `clone add g c --path ${dir}/c.img --create --json`))
  return {state, dir, own}
}

/**
 * The incremental row compares syncs, not processes: the sync's own time (SyncSummary.elapsedMs:
 * from the operation's start to durable completion) against the full sync's own time. The
 * command's wall time is shown too; the difference is the CLI's start-up (node and oclif,
 * ~0.15 s), the same for any command and no part of a sync.
 */
async function incremental(state: string, full: {wall: number; own: number}): Promise<void> {
  const wall: number[] = []
  const own: number[] = []
  for (let i = 0; i < RUNS; i++) {
    clonectl(state, 'clone fracture g c')
    // eslint-disable-next-line no-await-in-loop
    await dirtyExtents(state, 'g', 0.01, i + 7)
    settle()
    const t = timedOutput(`node ${bin} clone sync g c --json --state-dir=${state}`)
    wall.push(t.seconds)
    own.push(syncSeconds(t.stdout))
  }
  commands.push('clonectl clone sync g c --json   # after 1% of extents written through the host path; elapsedMs is the sync\'s own time')
  const s = stats(own)
  const w = stats(wall)
  const ratio = s.median / full.own
  const wallRatio = w.median / full.wall
  // --only incremental makes the full clone untimed: there is no whole full command to compare.
  const timedFull = Number.isFinite(full.wall)
  record({
    row: 'incremental sync, 1% of extents dirty',
    clonectl: `the sync's own time ${fmt(s, 's', 3)}; the whole command ${fmt(w)}`,
    peer: `the full sync's own time ${full.own.toFixed(2)} s${timedFull ? `; the whole command ${full.wall.toFixed(2)} s` : ''}`,
    ratio,
    ratioText: `${ratio.toFixed(3)}${timedFull ? ` (whole commands: ${wallRatio.toFixed(3)})` : ''}`,
    mark: '≤ 0.05',
    pass: ratio <= 0.05,
  })
}

function sparse(): void {
  const dir = freshDir(base, 'sparse')
  const src = join(dir, 'src.img')
  makeSparse(src, SIZE, 0.1)
  let state = ''
  const r = alternate(
    RUNS,
    () => timed(`node ${bin} clone add g c --path ${dir}/c.img --create --state-dir=${state}`),
    () => timed(`nbdcopy --flush ${src} ${dir}/nc.img`),
    (w) => {
      if (w === 'a') {
        state = join(dir, 'state')
        rmSync(state, {recursive: true, force: true})
        rmSync(join(dir, 'c.img'), {force: true})
        clonectl(state, `group create g --source ${src}`)
      } else sh(`rm -f ${dir}/nc.img; truncate -s ${SIZE} ${dir}/nc.img`)
    },
  )
  settle()
  const dd = timed(`dd if=${src} of=${dir}/dd.img bs=4M conv=fdatasync status=none`)
  sh(`rm -f ${dir}/dd.img`)
  const du = allocatedBytes(join(dir, 'c.img')) / allocatedBytes(src)
  const vsDd = dd / r.a.median
  const vsNbd = r.b.median / r.a.median
  record({
    row: `sparse sync, ${SIZE / MiB} MiB with 90% holes`,
    clonectl: fmt(r.a),
    peer: `dd ${dd.toFixed(2)} s; nbdcopy ${fmt(r.b)}`,
    ratio: vsDd,
    ratioText: `${vsDd.toFixed(1)}× faster than dd, ${vsNbd.toFixed(2)}× nbdcopy, clone du ${du.toFixed(2)}× source`,
    mark: '≥ 5× dd, ≥ 0.7 nbdcopy, du ≤ 2×',
    pass: vsDd >= 5 && vsNbd >= 0.7 && du <= 2,
  })
  rmSync(dir, {recursive: true, force: true})
}

/**
 * nbdcopy copies the clone over `peer.img`, a full (allocated) copy of the source: the same
 * work as copying it over the source, without changing the source behind clonectl's back.
 * (Copying over the source itself, as this row once did, made every later restore see a source
 * changed outside clonectl and rightly compare and copy every extent: the row then timed a
 * compare-restore of 2 GiB, not a restore of the dirty half.)
 */
async function protectedRestore(state: string, dir: string): Promise<void> {
  clonectl(state, 'clone fracture g c')
  sh(`cp ${dir}/src.img ${dir}/peer.img`)
  const a: number[] = []
  const b: number[] = []
  for (let i = 0; i < RUNS; i++) {
    // eslint-disable-next-line no-await-in-loop
    await dirtyExtents(state, 'g', 0.5, 100 + i)
    const ours = (): void => {
      settle()
      const t = timedOutput(`node ${bin} restore g c --yes --json --state-dir=${state}`)
      if ((JSON.parse(t.stdout) as {compared?: boolean}).compared) throw new Error('the bench restore compared every extent: the source changed outside clonectl')
      a.push(t.seconds)
    }
    const peer = (): void => {
      settle()
      b.push(timed(`nbdcopy --flush ${dir}/c.img ${dir}/peer.img`))
    }
    // Alternate which runs first.
    for (const f of i % 2 === 0 ? [ours, peer] : [peer, ours]) f()
  }
  sh(`rm -f ${dir}/peer.img`)
  commands.push('clonectl restore g c --yes   # 50% of extents written (scattered) since the fracture', 'nbdcopy --flush c.img peer.img   # peer.img: a full copy of the source')
  const sa = stats(a)
  const sb = stats(b)
  const ratio = sa.median / sb.median
  record({row: `protected restore, ${SIZE / MiB} MiB, 50% of extents dirty`, clonectl: fmt(sa), peer: `nbdcopy of the whole clone ${fmt(sb)}`, ratio, ratioText: `${ratio.toFixed(2)} of its time`, mark: '≤ 0.75', pass: ratio <= 0.75})
}

async function serveGroup(state: string, group: string): Promise<{proc: Awaited<ReturnType<typeof background>>; uri: string}> {
  const sock = join(state, 'groups', group, 'nbd.sock')
  rmSync(sock, {force: true})
  const proc = await background(`node ${bin} serve ${group} --state-dir=${state}`, sock)
  await new Promise((r) => setTimeout(r, 200))
  return {proc, uri: `nbd+unix:///?socket=${sock}`}
}

/** A 4K read over NBD with qemu-io (process start included, as a host's first read would not be). */
function read4k(uri: string, at: string, pattern?: number): number {
  return timed(`qemu-io -f raw '${uri}' -c 'read ${pattern === undefined ? '' : `-P ${pattern} `}${at} 4k'`)
}

/**
 * QEMU's instant restore, the nearest peer: a qcow2 overlay on the clone, exported by
 * qemu-storage-daemon through a copy-on-read filter, with a block-stream job pulling the rest
 * of the clone into it. Returns [first read after the stream job started, same from the
 * daemon's start], in seconds.
 */
async function qemuFirstRead(dir: string, clone: string): Promise<[number, number]> {
  const ovl = join(dir, 'overlay.qcow2')
  const nbd = join(dir, 'qsd-nbd.sock')
  const qmpSock = join(dir, 'qsd-qmp.sock')
  sh(`rm -f ${ovl} ${nbd} ${qmpSock}; qemu-img create -q -f qcow2 -b ${clone} -F raw ${ovl}`)
  const t0 = performance.now()
  const proc = await background(
    `qemu-storage-daemon --blockdev driver=file,filename=${ovl},node-name=ovl-file --blockdev driver=qcow2,file=ovl-file,node-name=ovl ` +
      `--blockdev driver=copy-on-read,file=ovl,node-name=cor --nbd-server addr.type=unix,addr.path=${nbd} ` +
      `--export type=nbd,id=exp,node-name=cor,name=,writable=on --chardev socket,path=${qmpSock},server=on,wait=off,id=qmp --monitor chardev=qmp`,
    qmpSock,
  )
  try {
    const qmp = await Qmp.connect(qmpSock)
    try {
      await qmp.execute('block-stream', {'job-id': 'restore', device: 'ovl'})
      const t1 = performance.now()
      const uri = `nbd+unix:///?socket=${nbd}`
      read4k(uri, '40M', 0)
      const t2 = performance.now()
      return [(t2 - t1) / 1000, (t2 - t0) / 1000]
    } finally {
      qmp.close()
    }
  } finally {
    await stop(proc)
  }
}

async function firstRead(): Promise<void> {
  const sizes = quick ? [256 * MiB, GiB] : [GiB, 16 * GiB]
  const haveQsd = have('qemu-storage-daemon') && have('qemu-img')
  const ours: string[] = []
  const theirs: string[] = []
  const lat: number[] = []
  for (const size of sizes) {
    const dir = freshDir(base, `first-${size}`)
    const state = join(dir, 'state')
    makeSparse(join(dir, 'src.img'), size, 0.001)
    clonectl(state, `group create g --source ${dir}/src.img`)
    clonectl(state, `clone add g c --path ${dir}/c.img --create`)
    clonectl(state, 'clone fracture g c')
    // Damage the first 64 MiB through the host path: what the first read after the restore needs.
    // eslint-disable-next-line no-await-in-loop
    const {proc, uri} = await serveGroup(state, 'g')
    let restore: Awaited<ReturnType<typeof background>> | undefined
    try {
      sh(`qemu-io -f raw '${uri}' -c 'write -P 0x5a 0 64M'`)
      const idle = read4k(uri, '32M')
      const t0 = performance.now()
      // eslint-disable-next-line no-await-in-loop
      restore = await background(`node ${bin} restore g c --yes --rate 50M --state-dir=${state}`, '/dev/null')
      // wait until the server runs the restore
      for (let i = 0; i < 500; i++) {
        // eslint-disable-next-line no-await-in-loop
        const s = (await controlRequest(join(state, 'groups', 'g', 'control.sock'), {op: 'status'}).catch(() => ({}))) as {server?: {operation?: unknown}; operation?: unknown}
        if (s.server?.operation ?? s.operation) break
        // eslint-disable-next-line no-await-in-loop
        await new Promise((r) => setTimeout(r, 10))
      }
      const t1 = performance.now()
      const t = read4k(uri, '40M', 0)
      const fromCli = (t1 - t0) / 1000 + t
      lat.push(t * 1000)
      ours.push(`${size / GiB} GiB: ${(t * 1000).toFixed(0)} ms (${(fromCli * 1000).toFixed(0)} ms from \`restore\` started; idle read ${(idle * 1000).toFixed(0)} ms)`)
    } finally {
      // eslint-disable-next-line no-await-in-loop
      if (restore) await stop(restore)
      // eslint-disable-next-line no-await-in-loop
      await stop(proc)
    }
    if (haveQsd) {
      try {
        // eslint-disable-next-line no-await-in-loop
        const [q, fromStart] = await qemuFirstRead(dir, join(dir, 'c.img'))
        theirs.push(`${size / GiB} GiB: ${(q * 1000).toFixed(0)} ms (${(fromStart * 1000).toFixed(0)} ms from daemon start)`)
      } catch (error) {
        theirs.push(`${size / GiB} GiB: failed (${(error as Error).message.split('\n')[0]})`)
      }
    }
    rmSync(dir, {recursive: true, force: true})
  }
  settle()
  const ddDir = freshDir(base, 'first-dd')
  makeSparse(join(ddDir, 'c.img'), sizes[0], 0.001)
  const dd = timed(`dd if=${ddDir}/c.img of=${ddDir}/s.img bs=4M conv=fdatasync status=none`)
  rmSync(ddDir, {recursive: true, force: true})
  commands.push(
    'clonectl serve g & clonectl restore g c --yes --rate 50M & qemu-io -c "read 40M 4k"   # timed: first read needing COD, once the server runs the restore',
    'qemu-img create -f qcow2 -b c.img -F raw overlay.qcow2; qemu-storage-daemon --blockdev qcow2 overlay → copy-on-read filter → NBD export; QMP block-stream; qemu-io -c "read 40M 4k"',
  )
  const worst = Math.max(...lat)
  const flat = lat.length > 1 ? lat[lat.length - 1] / Math.max(lat[0], 1) : 1
  record({
    row: 'time to first host read after a restore starts',
    clonectl: ours.join('; '),
    peer: `QEMU overlay + copy-on-read + block-stream: ${haveQsd ? theirs.join('; ') : 'not measured (install qemu-system-common for qemu-storage-daemon)'}; dd (first read = full copy of ${sizes[0] / GiB} GiB) ${dd.toFixed(2)} s`,
    ratio: worst,
    ratioText: `${worst.toFixed(0)} ms worst, ${flat.toFixed(1)}× from ${sizes[0] / GiB} to ${sizes[sizes.length - 1] / GiB} GiB (qemu-io process start included)`,
    mark: '≤ 100 ms, flat in size',
    pass: worst <= 100,
  })
}

async function fioRows(): Promise<void> {
  if (!have('fio')) return skip('fio rows', 'install fio')
  const dir = freshDir(base, 'fio')
  const state = join(dir, 'state')
  const size = quick ? 256 * MiB : GiB
  makeRandom(join(dir, 'src.img'), size)
  clonectl(state, `group create g --source ${dir}/src.img`)
  const job = {size: `${size / MiB}M`, runtime: FIO_SECONDS}
  const run = async (what: 'clonectl' | 'qemu-nbd' | 'nbdkit', rw: string, bs: string, iodepth: number): Promise<ReturnType<typeof fio>> => {
    if (what === 'clonectl') {
      const {proc, uri} = await serveGroup(state, 'g')
      try {
        return fio(uri, {...job, rw, bs, iodepth})
      } finally {
        await stop(proc)
      }
    }
    const sock = join(dir, `${what}.sock`)
    rmSync(sock, {force: true})
    const cmd = what === 'qemu-nbd' ? `qemu-nbd -f raw -t -k ${sock} ${dir}/src.img` : `nbdkit -f -U ${sock} file file=${dir}/src.img`
    const proc = await background(cmd, sock)
    try {
      return fio(`nbd+unix:///?socket=${sock}`, {...job, rw, bs, iodepth})
    } finally {
      await stop(proc)
    }
  }
  const peers: Array<'qemu-nbd' | 'nbdkit'> = []
  if (have('qemu-nbd')) peers.push('qemu-nbd')
  if (have('nbdkit')) peers.push('nbdkit')
  const rand: Record<string, number[]> = {clonectl: [], 'qemu-nbd': [], nbdkit: []}
  for (let i = 0; i < RUNS; i++)
    for (const w of ['clonectl', ...peers] as const) {
      // eslint-disable-next-line no-await-in-loop
      const r = await run(w, 'randrw', '4k', 16)
      rand[w].push(r.readIops + r.writeIops)
    }
  commands.push(`fio --ioengine=nbd --uri=... --rw=randrw --bs=4k --iodepth=16 --size=${job.size} --time_based --runtime=${FIO_SECONDS}`)
  const c = stats(rand.clonectl)
  const q = rand['qemu-nbd'].length ? stats(rand['qemu-nbd']) : undefined
  const k = rand.nbdkit.length ? stats(rand.nbdkit) : undefined
  const rq = q ? c.median / q.median : Number.NaN
  record({row: '4K randrw QD16 IOPS', clonectl: fmt(c, 'IOPS', 0), peer: `qemu-nbd ${q ? fmt(q, 'IOPS', 0) : '-'}; nbdkit ${k ? fmt(k, 'IOPS', 0) : '-'}`, ratio: rq, ratioText: `${rq.toFixed(2)} of qemu-nbd, ${k ? (c.median / k.median).toFixed(2) : '-'} of nbdkit`, mark: '≥ 0.8 of qemu-nbd', pass: q ? rq >= 0.8 : undefined})

  // Alternately, RUNS times each, medians (one sample each swung by ±30% on this VM).
  for (const rw of ['read', 'write'] as const) {
    const mbps = (r: ReturnType<typeof fio>): number => (rw === 'read' ? r.readMBps : r.writeMBps)
    const as: number[] = []
    const bs: number[] = []
    for (let i = 0; i < RUNS; i++) {
      // eslint-disable-next-line no-await-in-loop
      as.push(mbps(await run('clonectl', rw, '1M', 8)))
      // eslint-disable-next-line no-await-in-loop
      if (peers.includes('qemu-nbd')) bs.push(mbps(await run('qemu-nbd', rw, '1M', 8)))
    }
    const ma = stats(as).median
    const mb = bs.length ? stats(bs).median : Number.NaN
    record({row: `1M sequential ${rw} MB/s`, clonectl: fmt(stats(as), 'MB/s', 0), peer: `qemu-nbd ${bs.length ? fmt(stats(bs), 'MB/s', 0) : '-'}`, ratio: ma / mb, ratioText: (ma / mb).toFixed(2), mark: '≥ 0.9', pass: bs.length ? ma / mb >= 0.9 : undefined})
  }

  // A fractured clone: every first write to an extent pays one map commit. Alternately,
  // RUNS times: no clone, then one fractured clone (removed again before the next pair).
  const noneW: number[] = []
  const oneW: number[] = []
  for (let i = 0; i < RUNS; i++) {
    // eslint-disable-next-line no-await-in-loop
    noneW.push((await run('clonectl', 'randwrite', '4k', 16)).writeIops)
    clonectl(state, `clone add g c --path ${dir}/c.img --create`)
    clonectl(state, 'clone fracture g c')
    // eslint-disable-next-line no-await-in-loop
    oneW.push((await run('clonectl', 'randwrite', '4k', 16)).writeIops)
    if (i < RUNS - 1) {
      clonectl(state, 'clone remove g c --yes')
      rmSync(join(dir, 'c.img'), {force: true})
    }
  }
  const rf = stats(oneW).median / stats(noneW).median
  record({row: '4K randwrite with one fractured clone', clonectl: fmt(stats(oneW), 'IOPS', 0), peer: `no clone ${fmt(stats(noneW), 'IOPS', 0)}`, ratio: rf, ratioText: rf.toFixed(2), mark: '≥ 0.5', pass: rf >= 0.5})

  // During a protected restore, alternately with idle, RUNS times; the first one also
  // records the timeline for the SVG.
  const idleI: number[] = []
  const duringI: number[] = []
  const p99: number[] = []
  for (let i = 0; i < RUNS; i++) {
    clonectl(state, 'clone sync g c')
    clonectl(state, 'clone fracture g c')
    // eslint-disable-next-line no-await-in-loop
    const idle = await run('clonectl', 'randrw', '4k', 16)
    idleI.push(idle.readIops + idle.writeIops)
    // eslint-disable-next-line no-await-in-loop
    await dirtyExtents(state, 'g', 0.5, 5 + i)
    // eslint-disable-next-line no-await-in-loop
    const during = await duringRestore(i === 0)
    duringI.push(during.readIops + during.writeIops)
    if (during.readP99us !== undefined) p99.push(during.readP99us)
  }
  async function duringRestore(withTimeline: boolean): Promise<ReturnType<typeof fio>> {
    const {proc, uri} = await serveGroup(state, 'g')
    const control = join(state, 'groups', 'g', 'control.sock')
    const timeline: Array<{t: number; done: number}> = []
    const t0 = Date.now()
    let restore: Awaited<ReturnType<typeof background>> | undefined
    try {
      const logBase = join(dir, 'fiolog')
      // Asynchronous, so the progress sampler below runs while fio does.
      const fioDone = fioAsync(uri, {...job, rw: 'randrw', bs: '4k', iodepth: 16, extra: `--percentile_list=99${withTimeline ? ` --write_iops_log=${logBase} --log_avg_msec=250` : ''}`})
      restore = await background(`node ${bin} restore g c --yes --rate ${quick ? '64M' : '256M'} --state-dir=${state}`, '/dev/null')
      const sampler = setInterval(() => {
        controlRequest(control, {op: 'status'})
          .then((st) => {
            const op = (st as {server?: {operation?: {doneBytes: number; totalBytes: number}}}).server?.operation
            if (op) timeline.push({t: (Date.now() - t0) / 1000, done: op.totalBytes ? (100 * op.doneBytes) / op.totalBytes : 100})
          })
          .catch(() => undefined)
      }, 250)
      const during = await fioDone
      clearInterval(sampler)
      if (withTimeline && !quick) writeTimeline(logBase, timeline)
      // Let the restore finish (unthrottled), so the next run starts from a fractured clone.
      await controlRequest(control, {op: 'rate', rate: 0}).catch(() => undefined)
      const r = restore
      if (r.exitCode === null) await new Promise((resolve) => r.once('exit', resolve))
      return during
    } finally {
      if (restore) await stop(restore)
      await stop(proc)
    }
  }
  const during = {readP99us: p99.length ? stats(p99).median : undefined}
  const rd = stats(duringI).median / stats(idleI).median
  record({
    row: '4K randrw during a protected restore',
    clonectl: `${fmt(stats(duringI), 'IOPS', 0)}, read p99 ${during.readP99us?.toFixed(0) ?? '?'} µs`,
    peer: `idle ${fmt(stats(idleI), 'IOPS', 0)}`,
    ratio: rd,
    ratioText: rd.toFixed(2),
    mark: '≥ 0.5',
    pass: rd >= 0.5,
  })
  rmSync(dir, {recursive: true, force: true})
}

function writeTimeline(logBase: string, progress: Array<{t: number; done: number}>): void {
  const logs = ['_iops.1.log', '_iops.log'].map((s) => `${logBase}${s}`).filter((p) => existsSync(p))
  const iops: Array<{t: number; v: number}> = []
  if (logs[0])
    for (const line of readFileSync(logs[0], 'utf8').split('\n')) {
      const [ms, v] = line.split(',').map((x) => Number(x.trim()))
      if (Number.isFinite(ms) && Number.isFinite(v)) iops.push({t: ms / 1000, v})
    }
  const W = 720
  const H = 300
  const maxT = Math.max(1, ...iops.map((p) => p.t), ...progress.map((p) => p.t))
  const maxV = Math.max(1, ...iops.map((p) => p.v))
  const x = (t: number): number => 50 + (t / maxT) * (W - 100)
  const y = (f: number): number => H - 40 - f * (H - 80)
  const line = (pts: Array<[number, number]>): string => pts.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(' ')
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="${W / 2}" y="20" text-anchor="middle">Host I/O during a protected restore (fio 4K randrw QD16 over clonectl serve)</text>
<line x1="50" y1="${H - 40}" x2="${W - 50}" y2="${H - 40}" stroke="black"/><line x1="50" y1="40" x2="50" y2="${H - 40}" stroke="black"/>
<text x="${W / 2}" y="${H - 10}" text-anchor="middle">seconds since the restore started</text>
<text x="10" y="35" fill="steelblue">write IOPS (max ${maxV.toFixed(0)})</text>
<text x="${W - 10}" y="35" fill="darkorange" text-anchor="end">restore progress %</text>
<polyline fill="none" stroke="steelblue" stroke-width="1.5" points="${line(iops.map((p) => [x(p.t), y(p.v / maxV)]))}"/>
<polyline fill="none" stroke="darkorange" stroke-width="2" points="${line(progress.map((p) => [x(p.t), y(p.done / 100)]))}"/>
</svg>
`
  writeFileSync(join(repo, 'bench', 'restore-timeline.svg'), svg)
}

function memory(): void {
  const size = quick ? GiB : 16 * GiB
  const dir = freshDir(base, 'mem')
  const state = join(dir, 'state')
  makeSparse(join(dir, 'src.img'), size, 0.0005)
  clonectl(state, `group create g --source ${dir}/src.img`)
  const rss = (cmd: string): number => Number(sh(`/usr/bin/time -f '%M' ${cmd} --state-dir=${state} 2>&1 >/dev/null | tail -1`).trim()) / 1024
  const sync = rss(`node ${bin} clone add g c --path ${dir}/c.img --create`)
  clonectl(state, 'clone fracture g c')
  sh(`dd if=/dev/urandom of=${dir}/src.img bs=1M count=8 seek=100 conv=notrunc status=none`)
  const restore = rss(`node ${bin} restore g c --yes`)
  const worst = Math.max(sync, restore)
  record({row: `memory: peak RSS, sync and restore of a ${size / GiB} GiB sparse source`, clonectl: `sync ${sync.toFixed(0)} MiB, restore ${restore.toFixed(0)} MiB`, peer: '-', ratio: worst, ratioText: `${worst.toFixed(0)} MiB`, mark: '≤ 150 MiB', pass: worst <= 150})
  rmSync(dir, {recursive: true, force: true})
}

async function main(): Promise<void> {
  const missing = ['nbdcopy', 'qemu-io', 'qemu-nbd', 'nbdkit', 'fio'].filter((c) => !have(c))
  if (missing.length) process.stdout.write(`missing tools: ${missing.join(', ')} (apt-get install libnbd-bin qemu-utils nbdkit fio); their rows are skipped\n`)
  process.stdout.write(`clonectl bench${quick ? ' --quick' : ''}: ${SIZE / MiB} MiB, ${RUNS} run(s) per pair, in ${base}\n`)
  const canCopy = have('nbdcopy')
  let fullMedian = Number.NaN
  if (!canCopy) skip('copy rows', 'install libnbd-bin (nbdcopy)')
  else {
    if (want('full') || want('incremental') || want('restore')) {
      const {state, dir, own} = want('full') ? fullAndIncremental() : untimedFull()
      if (want('full')) fullMedian = Number.parseFloat(rows[rows.length - 1].clonectl)
      if (want('incremental')) await incremental(state, {wall: fullMedian, own})
      if (want('restore')) await protectedRestore(state, dir)
      rmSync(dir, {recursive: true, force: true})
    }
    if (want('sparse')) sparse()
    if (want('remote')) await remoteRows()
  }
  if (want('first-read')) {
    if (have('qemu-io')) await firstRead()
    else skip('time to first host read', 'install qemu-utils')
  }
  if (want('fio')) await fioRows()
  if (want('memory')) memory()
  if (want('mirror')) await mirrorRows({base, quick, runs: RUNS, fioSeconds: FIO_SECONDS, record, skip, fmt, commands})
  if (!quick && !only && !arg('size') && !arg('runs')) writeReport()
  rmSync(base, {recursive: true, force: true})
  const missed = rows.filter((r) => r.pass === false).length
  process.stdout.write(`bench done: marks met by ${rows.filter((r) => r.pass).length} of ${rows.length} rows (${missed} missed)${quick ? '; --quick: marks are not enforced' : ''}\n`)
}

function writeReport(): void {
  const machine = `${cpus().length} cores (${cpus()[0]?.model ?? '?'}), ${(totalmem() / GiB).toFixed(0)} GiB, Linux ${release()}, Node ${process.version}`
  const table = rows.map((r) => `| ${r.row} | ${r.clonectl} | ${r.peer} | ${r.ratioText} | ${r.mark} | ${r.pass === undefined ? 'n/a' : r.pass ? 'pass' : '**miss**'} |`).join('\n')
  const md = `# clonectl benchmarks

Measured by \`npm run bench\` on ${new Date().toISOString().slice(0, 10)}: ${machine}.
Each pair ran alternately ${RUNS} times on the same files; medians (min, max) and the median
ratio are shown. Numbers are as measured; rows that miss their mark say so.

| row | clonectl | peer | ratio | mark | result |
|---|---|---|---|---|---|
${table}

![host IOPS and restore progress during a protected restore](bench/restore-timeline.svg)

Commands:

\`\`\`
${commands.join('\n')}
\`\`\`
`
  writeFileSync(join(repo, 'BENCHMARKS.md'), md)
}

await main()
