/**
 * Block status through `clonectl serve`, with clients nobody here wrote (issue 16, item 4).
 *
 * On one group g: a 64 MiB sparse source with data at 1 MiB (64 KiB), 20 MiB (4 KiB) and the
 * last 128 KiB; clone c1 added, then fractured.
 *   given serve g, nbdinfo --list shows base:allocation and clonectl:delta:c1;
 *   nbdinfo --map shows exactly the source's data runs, holes as hole,zero;
 *   qemu-img map over NBD agrees (data false where the source has holes);
 *   when qemu-io writes at 3 MiB (100 KiB) and 40 MiB (4 KiB), nbdinfo --map=clonectl:delta:c1
 *   shows exactly the 64 KiB extents written since the fracture, dirty;
 *   nbdcopy -S 0 (no zero detection of its own) from the export to a file copies the bytes
 *   and keeps the holes block status reported (few blocks).
 */
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {KiB, MiB, type Served, clonectlOk, has, needTool, runOk, sameContent, startServe, tempDir} from '../helpers/serve.js'

const SIZE = 64 * MiB
const missing = ['nbdinfo', 'qemu-io', 'qemu-img', 'nbdcopy'].filter((c) => !has(c, '--version'))
const needClients = missing.length ? `needs ${missing.join(', ')}` : false

let dir: string
let state: string
let src: string
let served: Served | undefined

/** The data runs written into the sparse source: [offset, length]. */
const DATA: Array<[number, number]> = [
  [1 * MiB, 64 * KiB],
  [20 * MiB, 4 * KiB],
  [SIZE - 128 * KiB, 128 * KiB],
]

before(async () => {
  if (needClients) return
  dir = await tempDir('blockstatus')
  state = join(dir, 'state')
  src = join(dir, 'src.img')
  const fh = await fsp.open(src, 'w+')
  await fh.truncate(SIZE)
  for (const [off, len] of DATA) await fh.write(randomBytes(len), 0, len, off)
  await fh.close()
  await clonectlOk(state, ['group', 'create', 'g', '--source', src])
  await clonectlOk(state, ['clone', 'add', 'g', 'c1', '--path', join(dir, 'c1.img'), '--create'])
  await clonectlOk(state, ['clone', 'fracture', 'g', 'c1'])
  served = await startServe(state, 'g')
})

after(async () => {
  if (served) await served.stop('SIGKILL')
  if (dir) await fsp.rm(dir, {recursive: true, force: true})
})

interface MapEntry {
  offset: number
  length: number
  type: number
  description?: string
}

async function nbdMap(context?: string): Promise<MapEntry[]> {
  const r = await runOk('nbdinfo', ['--json', context ? `--map=${context}` : '--map', served!.uri])
  return JSON.parse(r.stdout) as MapEntry[]
}

/** Runs covering [0, SIZE) from data runs: data 0, holes 3 (hole,zero). */
function expectedAllocation(data: Array<[number, number]>): Array<{offset: number; length: number; type: number}> {
  const out: Array<{offset: number; length: number; type: number}> = []
  let pos = 0
  for (const [off, len] of data) {
    if (off > pos) out.push({offset: pos, length: off - pos, type: 3})
    out.push({offset: off, length: len, type: 0})
    pos = off + len
  }
  if (pos < SIZE) out.push({offset: pos, length: SIZE - pos, type: 3})
  return out
}

describe('serve answers block status', () => {
  before(() => needTool(needClients))
  test('given serve g, nbdinfo --list shows the contexts: base:allocation and one delta per clone', async () => {
    const r = await runOk('nbdinfo', ['--list', '--json', served!.uri])
    const e = (JSON.parse(r.stdout) as {exports: Array<{contexts?: string[]}>}).exports[0]
    assert.deepEqual(e.contexts, ['base:allocation', 'clonectl:delta:c1'])
  })

  test('nbdinfo --map shows exactly the source data runs, holes as hole,zero', async () => {
    const got = (await nbdMap()).map(({offset, length, type}) => ({offset, length, type}))
    assert.deepEqual(got, expectedAllocation(DATA))
  })

  test('qemu-img map over NBD agrees: data only where the source has data', async () => {
    const r = await runOk('qemu-img', ['map', '--output=json', '-f', 'raw', served!.uri])
    const got = (JSON.parse(r.stdout) as Array<{start: number; length: number; data: boolean; zero: boolean}>).map(({start, length, data, zero}) => ({start, length, data, zero}))
    const want = expectedAllocation(DATA).map((x) => ({start: x.offset, length: x.length, data: x.type === 0, zero: x.type !== 0}))
    assert.deepEqual(got, want)
  })

  test('when qemu-io writes after the fracture, nbdinfo --map=clonectl:delta:c1 shows exactly the extents written', async () => {
    const before = await nbdMap('clonectl:delta:c1')
    assert.deepEqual(
      before.map(({offset, length, type}) => ({offset, length, type})),
      [{offset: 0, length: SIZE, type: 0}],
      'nothing written since the fracture: all clean',
    )
    await runOk('qemu-io', ['-f', 'raw', served!.uri, '-c', 'write -P 0x61 3M 100k', '-c', 'write -P 0x62 40M 4k', '-c', 'flush'])
    const X = 64 * KiB
    const got = (await nbdMap('clonectl:delta:c1')).map(({offset, length, type}) => ({offset, length, type}))
    assert.deepEqual(got, [
      {offset: 0, length: 3 * MiB, type: 0},
      {offset: 3 * MiB, length: 2 * X, type: 1}, // 100 KiB at 3 MiB touches two 64 KiB extents
      {offset: 3 * MiB + 2 * X, length: 40 * MiB - 3 * MiB - 2 * X, type: 0},
      {offset: 40 * MiB, length: X, type: 1},
      {offset: 40 * MiB + X, length: SIZE - 40 * MiB - X, type: 0},
    ])
    // base:allocation follows the new data too.
    const alloc = (await nbdMap()).map(({offset, length, type}) => ({offset, length, type}))
    assert.deepEqual(alloc, expectedAllocation([DATA[0], [3 * MiB, 100 * KiB], DATA[1], [40 * MiB, 4 * KiB], DATA[2]]))
  })

  test('nbdcopy from the export to a file copies every byte and keeps the holes', async () => {
    const out = join(dir, 'out.img')
    // -S 0: no zero detection of its own, so the holes it keeps are the ones block status reported.
    await runOk('nbdcopy', ['-S', '0', served!.uri, out])
    assert.ok(await sameContent(src, out), 'same bytes as the source')
    const st = await fsp.stat(out)
    const dataBytes = 64 * KiB + 4 * KiB + 128 * KiB + 100 * KiB + 4 * KiB
    // A few file-system blocks of slack per run; a copy that wrote the holes would hold 64 MiB.
    assert.ok(st.blocks * 512 <= dataBytes + 1 * MiB, `out.img allocates ${st.blocks * 512} bytes for ${dataBytes} bytes of data`)
  })
})
