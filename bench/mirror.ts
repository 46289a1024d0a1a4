/**
 * Rows for issue 14 (`--only mirror`):
 * - 4K randwrite QD16 through serve with one and with three synchronized clones, beside the
 *   same with no clone (alternating, medians): what mirroring plus write-intent costs.
 * - A full sync of a clone through serve while fio writes 4K random blocks at a fixed rate,
 *   beside the same sync idle: time and bytes copied; peer: qemu-storage-daemon's
 *   blockdev-mirror with copy-mode=write-blocking under the same load.
 */
import {spawn, type ChildProcess} from 'node:child_process'
import {rmSync} from 'node:fs'
import {join} from 'node:path'
import {background, bin, clonectl, freshDir, have, Qmp, settle, sh, stats, stop, type Stats} from './harness.js'

const MiB = 1024 * 1024
const GiB = 1024 * MiB

export interface MirrorBench {
  base: string
  quick: boolean
  runs: number
  fioSeconds: number
  record: (r: {row: string; clonectl: string; peer: string; ratio: number; ratioText: string; mark: string; pass: boolean | undefined; note?: string}) => void
  skip: (row: string, why: string) => void
  fmt: (s: Stats, unit?: string, digits?: number) => string
  commands: string[]
}

function makeRandom(path: string, size: number): void {
  sh(`head -c ${size} /dev/urandom > ${path}`)
}

async function serve(state: string, group: string): Promise<{proc: ChildProcess; uri: string}> {
  const sock = join(state, 'groups', group, 'nbd.sock')
  rmSync(sock, {force: true})
  const proc = await background(`node ${bin} serve ${group} --state-dir=${state}`, sock)
  await new Promise((r) => setTimeout(r, 200))
  return {proc, uri: `nbd+unix:///?socket=${sock}`}
}

/** 4K randwrite QD16 over NBD: write IOPS and write completion p99 (µs). */
function randwrite(uri: string, size: number, seconds: number): {iops: number; p99us: number} {
  const out = sh(`fio --name=b --ioengine=nbd --uri='${uri}' --rw=randwrite --bs=4k --iodepth=16 --size=${size / MiB}M --time_based --runtime=${seconds} --output-format=json 2>/dev/null`)
  const j = JSON.parse(out.slice(out.indexOf('{'))) as {jobs: Array<{write: {iops: number; clat_ns?: {percentile?: Record<string, number>}}}>}
  const w = j.jobs[0].write
  return {iops: w.iops, p99us: (w.clat_ns?.percentile?.['99.000000'] ?? Number.NaN) / 1000}
}

/** fio writing 4K random blocks at `mibps` MiB/s in all (4 jobs) until stopped (SIGINT: fio stops cleanly). */
function loadAt(uri: string, size: number, mibps: number): ChildProcess {
  // fio's --rate is per job.
  return spawn('fio', ['--name=load', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=4', '--numjobs=4', `--size=${size / MiB}M`, `--rate=${Math.round((mibps * 1024) / 4)}k`, '--time_based', '--runtime=600', '--output-format=json'], {stdio: 'ignore'})
}

async function endLoad(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null) return
  const done = new Promise((r) => p.once('exit', r))
  p.kill('SIGINT')
  await Promise.race([done, new Promise((r) => setTimeout(r, 15_000))])
  if (p.exitCode === null) p.kill('SIGKILL')
}

async function clonesRows(b: MirrorBench): Promise<void> {
  const dir = freshDir(b.base, 'mirror-fio')
  const state = join(dir, 'state')
  const size = b.quick ? 256 * MiB : GiB
  // One group per clone count, each its own source: no run pays another's map commits.
  for (const [g, n] of [['g0', 0], ['g1', 1], ['g3', 3]] as const) {
    makeRandom(join(dir, `${g}.img`), size)
    clonectl(state, `group create ${g} --source ${dir}/${g}.img`)
    for (let i = 1; i <= n; i++) clonectl(state, `clone add ${g} c${i} --path ${dir}/${g}-c${i}.img --create`)
  }
  const res: Record<string, Array<{iops: number; p99us: number}>> = {g0: [], g1: [], g3: []}
  for (let i = 0; i < b.runs; i++)
    for (const g of i % 2 === 0 ? (['g0', 'g1', 'g3'] as const) : (['g3', 'g1', 'g0'] as const)) {
      settle()
      const {proc, uri} = await serve(state, g)
      try {
        res[g].push(randwrite(uri, size, b.fioSeconds))
      } finally {
        await stop(proc)
      }
    }
  b.commands.push(`fio --ioengine=nbd --uri=... --rw=randwrite --bs=4k --iodepth=16 --size=${size / MiB}M --time_based --runtime=${b.fioSeconds} (groups with 0, 1 and 3 synchronized clones, alternating)`)
  const none = stats(res.g0.map((r) => r.iops))
  const noneP99 = stats(res.g0.map((r) => r.p99us))
  for (const [g, label] of [['g1', 'one synchronized clone'], ['g3', 'three synchronized clones']] as const) {
    const s = stats(res[g].map((r) => r.iops))
    const p = stats(res[g].map((r) => r.p99us))
    const ratio = s.median / none.median
    const pr = p.median / noneP99.median
    b.record({
      row: `4K randwrite QD16 IOPS, ${label}`,
      clonectl: `${b.fmt(s, 'IOPS', 0)}; p99 ${p.median.toFixed(0)} µs`,
      peer: `no clone ${b.fmt(none, 'IOPS', 0)}; p99 ${noneP99.median.toFixed(0)} µs`,
      ratio,
      ratioText: `${ratio.toFixed(2)} of no clone, p99 ${pr.toFixed(2)}x`,
      mark: '≥ 0.8 of no clone, p99 ≤ 2x',
      pass: ratio >= 0.8 && pr <= 2,
    })
  }
  rmSync(dir, {recursive: true, force: true})
}

/** One full sync of a fresh clone through serve; the sync's own seconds and bytes copied. */
async function clonectlSync(state: string, dir: string, uri: string, size: number, rate?: number): Promise<{seconds: number; copied: number}> {
  const path = join(dir, 'c.img')
  rmSync(path, {force: true})
  clonectl(state, `clone add s c --path ${path} --create --no-sync`)
  const load = rate ? loadAt(uri, size, rate) : undefined
  try {
    if (load) await new Promise((r) => setTimeout(r, 1000)) // the load is running
    const out = JSON.parse(clonectl(state, 'clone sync s c --json')) as {copiedBytes: number; elapsedMs: number}
    if (load && load.exitCode !== null) throw new Error('fio stopped before the sync finished')
    return {seconds: out.elapsedMs / 1000, copied: out.copiedBytes}
  } finally {
    if (load) await endLoad(load)
    clonectl(state, 'clone remove s c --yes')
  }
}

/** qemu-storage-daemon: blockdev-mirror (copy-mode=write-blocking) of its exported source until ready. */
async function qsdMirror(dir: string, src: string, size: number, rate?: number): Promise<{seconds: number; copied: number}> {
  const nbd = join(dir, 'qsd.sock')
  const qmpSock = join(dir, 'qmp.sock')
  const tgt = join(dir, 'qsd-tgt.img')
  for (const f of [nbd, qmpSock, tgt]) rmSync(f, {force: true})
  sh(`truncate -s ${size} ${tgt}`)
  const proc = await background(
    `qemu-storage-daemon --blockdev driver=file,node-name=srcf,filename=${src} --blockdev driver=raw,node-name=src,file=srcf --nbd-server addr.type=unix,addr.path=${nbd} --export type=nbd,id=e,node-name=src,writable=on --chardev socket,path=${qmpSock},server=on,wait=off,id=qmp --monitor chardev=qmp`,
    nbd,
  )
  const q = await Qmp.connect(qmpSock)
  const load = rate ? loadAt(`nbd+unix:///src?socket=${nbd}`, size, rate) : undefined
  try {
    if (load) await new Promise((r) => setTimeout(r, 1000))
    await q.execute('blockdev-add', {driver: 'raw', 'node-name': 'tgt', file: {driver: 'file', filename: tgt}})
    const t0 = performance.now()
    await q.execute('blockdev-mirror', {'job-id': 'm', device: 'src', target: 'tgt', sync: 'full', 'copy-mode': 'write-blocking'})
    for (;;) {
      const jobs = (await q.execute('query-block-jobs')) as Array<{device: string; ready: boolean; offset: number}>
      const j = jobs.find((x) => x.device === 'm')
      if (!j) throw new Error('the mirror job vanished')
      if (j.ready) return {seconds: (performance.now() - t0) / 1000, copied: j.offset}
      await new Promise((r) => setTimeout(r, 20))
    }
  } finally {
    if (load) await endLoad(load)
    await q.execute('block-job-cancel', {device: 'm', force: true}).catch(() => undefined)
    q.close()
    await stop(proc)
  }
}

async function syncRows(b: MirrorBench): Promise<void> {
  const dir = freshDir(b.base, 'mirror-sync')
  const state = join(dir, 'state')
  const size = b.quick ? 256 * MiB : GiB
  const rate = 32 // MiB/s of 4K random writes
  const src = join(dir, 'src.img')
  makeRandom(src, size)
  clonectl(state, `group create s --source ${src}`)
  const idle: Array<{seconds: number; copied: number}> = []
  const busy: Array<{seconds: number; copied: number}> = []
  for (let i = 0; i < b.runs; i++) {
    settle()
    const {proc, uri} = await serve(state, 's')
    try {
      idle.push(await clonectlSync(state, dir, uri, size))
      busy.push(await clonectlSync(state, dir, uri, size, rate))
    } finally {
      await stop(proc)
    }
  }
  const qemu: Array<{seconds: number; copied: number}> = []
  if (have('qemu-storage-daemon'))
    for (let i = 0; i < b.runs; i++) {
      settle()
      qemu.push(await qsdMirror(dir, src, size, rate))
    }
  b.commands.push(`clonectl clone sync s c --json (fresh ${size / MiB} MiB clone, through serve), idle and under fio --rw=randwrite --bs=4k --numjobs=4 --iodepth=4 at ${rate} MiB/s in all; qemu-storage-daemon blockdev-mirror sync=full copy-mode=write-blocking under the same load, until ready`)
  const ti = stats(idle.map((r) => r.seconds))
  const tb = stats(busy.map((r) => r.seconds))
  const cb = stats(busy.map((r) => r.copied / size))
  const tq = qemu.length ? stats(qemu.map((r) => r.seconds)) : undefined
  const cq = qemu.length ? stats(qemu.map((r) => r.copied / size)) : undefined
  const ratio = tb.median / ti.median
  b.record({
    row: `full sync ${size / MiB} MiB under 4K randwrite at ${rate} MiB/s`,
    clonectl: `${b.fmt(tb)} (idle ${b.fmt(ti)}); copied ${cb.median.toFixed(2)}x the volume`,
    peer: tq && cq ? `qemu-storage-daemon write-blocking mirror ${b.fmt(tq)}; copied ${cq.median.toFixed(2)}x` : 'qemu-storage-daemon -',
    ratio,
    ratioText: `${ratio.toFixed(2)}x its idle time${tq ? `, ${(tb.median / tq.median).toFixed(2)}x qemu's` : ''}`,
    mark: '≤ 2x idle time, ≤ 1.5x the volume copied',
    pass: ratio <= 2 && cb.median <= 1.5,
  })
  rmSync(dir, {recursive: true, force: true})
}

export async function mirrorRows(b: MirrorBench): Promise<void> {
  if (!have('fio')) return b.skip('mirror rows', 'install fio')
  await clonesRows(b)
  await syncRows(b)
}
