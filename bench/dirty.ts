import {randomBytes} from 'node:crypto'
import {HostIO} from '../src/engine/HostIO.js'
import {withGroup} from '../src/group/GroupSession.js'
import {nodeFs} from '../src/io/NodeDurableFs.js'
import {GroupStore} from '../src/store/GroupStore.js'

/**
 * Write `fraction` of a group's extents, scattered, through the host I/O path (as `serve`
 * would), so the maps record them exactly as they would in production.
 */
export async function dirtyExtents(stateDir: string, group: string, fraction: number, seed = 1): Promise<number> {
  const ctx = {fs: nodeFs, store: new GroupStore(nodeFs, stateDir)}
  return withGroup(ctx, group, {command: 'bench dirty'}, async (g) => {
    const host = new HostIO(g)
    let a = seed >>> 0
    const rand = (): number => {
      a = (Math.imul(a, 1664525) + 1013904223) >>> 0
      return a / 2 ** 32
    }
    const picked = new Set<number>()
    const want = Math.floor(g.extentCount * fraction)
    while (picked.size < want) picked.add(Math.floor(rand() * g.extentCount))
    const data = randomBytes(g.extentSize)
    const all = [...picked]
    for (let i = 0; i < all.length; i += 64) {
      await Promise.all(all.slice(i, i + 64).map((e) => host.write(e * g.extentSize, data.subarray(0, Math.min(g.extentSize, g.volumeSize - e * g.extentSize)), false)))
    }
    await host.flush()
    return want
  })
}
