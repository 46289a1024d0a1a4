/**
 * The plain table (src/ui/tables.ts drawPlain) is drawn by hand only because cli-table3 is slow
 * to start; it must be, to the character, what cli-table3 draws for the same cells.
 */
import assert from 'node:assert/strict'
import {test} from 'node:test'
import Table from 'cli-table3'
import fc from 'fast-check'
import {drawPlain, renderTable} from '../../src/ui/tables.js'

const cliTable3 = (head: string[], rows: string[][]): string => {
  const t = new Table({head, style: {head: [], border: []}})
  for (const r of rows) t.push(r)
  return t.toString()
}

const cell = fc.string({unit: fc.integer({min: 0x20, max: 0x7e}).map((c) => String.fromCharCode(c)), maxLength: 24})

test('given printable ASCII cells, then drawPlain draws what cli-table3 draws', () => {
  fc.assert(
    fc.property(
      fc.integer({min: 1, max: 7}).chain((n) => fc.tuple(fc.array(cell, {minLength: n, maxLength: n}), fc.array(fc.array(cell, {minLength: n, maxLength: n}), {maxLength: 6}))),
      ([head, rows]) => assert.equal(drawPlain(head, rows), cliTable3(head, rows)),
    ),
    {numRuns: 500},
  )
})

test('given a status-like table, then the plain drawing equals cli-table3 and renderTable uses it off a terminal', () => {
  const head = ['clone', 'state', 'dirty', 'in sync', 'last sync', 'last fracture', 'path']
  const rows = [
    ['c', 'synchronized', '0 ext / 0 B', '100.0%', '1.6 s ago', '-', '/tmp/su/c1.img'],
    ['nightly', 'fractured', '12 ext / 768.0 KiB', '99.9%', '3 h ago', '2 h ago', '/var/lib/images/nightly.img'],
  ]
  assert.equal(drawPlain(head, rows), cliTable3(head, rows))
  assert.equal(renderTable(head, rows), cliTable3(head, rows))
})

test('given a cell that is not plain (a newline, a colour, a non-ASCII character), then drawPlain leaves it to cli-table3', () => {
  for (const odd of ['two\nlines', '\u001B[32mgreen\u001B[39m', 'size × 2', 'tab\there'])
    assert.equal(drawPlain(['a', 'b'], [['x', odd]]), undefined, JSON.stringify(odd))
  assert.equal(renderTable(['a', 'b'], [['x', 'two\nlines']]), cliTable3(['a', 'b'], [['x', 'two\nlines']]))
})
