// Votes on the A/B page as people would, in Debian's Chromium (puppeteer-core drives it):
//   node ab_votes.mjs URL CHROMIUM ANNOTATOR VOTES
// Votes alternate between clicks and keys; before the third vote the page is reloaded (the same
// pair must come back). Prints one JSON line per vote: what was shown and what was chosen, and
// at the end what the page and its network traffic revealed.
import puppeteer from "puppeteer-core";

const [url, chromium, annotator, votesArg] = process.argv.slice(2);
const votes = Number(votesArg);
const browser = await puppeteer.launch({
  executablePath: chromium, headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
const page = await browser.newPage();
const traffic = [];
page.on("response", async (res) => {
  if (res.url().includes("/api/")) traffic.push(await res.text().catch(() => ""));
});
const errors = [];
page.on("pageerror", (e) => errors.push(String(e)));
page.on("dialog", async (d) => { errors.push("dialog: " + d.message()); await d.dismiss(); });

async function shown() {
  await page.waitForFunction(() => !document.getElementById("pair").hidden
    || document.getElementById("status").textContent.includes("All prompts"));
  return page.evaluate(() => ({
    done: document.getElementById("pair").hidden,
    prompt: document.getElementById("prompt").textContent,
    a: document.getElementById("answer-a").textContent,
    b: document.getElementById("answer-b").textContent,
    aHtml: document.getElementById("answer-a").innerHTML,
    count: document.getElementById("count").textContent,
  }));
}

await page.goto(`${url}/?annotator=${encodeURIComponent(annotator)}`, { waitUntil: "networkidle0" });
const keys = { a: "a", b: "b", tie: "t", both_bad: "x" };
const choices = ["a", "b", "tie", "a", "both_bad", "b", "a", "a", "b", "tie"];
for (let i = 0; i < votes; i++) {
  let before = await shown();
  if (before.done) break;
  if (i === 2) {                       // a reload shows the same pair, and counts nothing twice
    await page.reload({ waitUntil: "networkidle0" });
    const again = await shown();
    console.log(JSON.stringify({ reload: true, same: again.a === before.a && again.b === before.b
      && again.prompt === before.prompt && again.count === before.count }));
    before = again;
  }
  const choice = choices[i % choices.length];
  const waitVote = page.waitForResponse((r) => r.url().endsWith("/api/vote"));
  if (i % 2 === 0) await page.click(`#vote-${choice}`);
  else await page.keyboard.press(keys[choice]);
  const res = await waitVote;
  await page.waitForFunction((count) => document.getElementById("count").textContent !== count
    || document.getElementById("pair").hidden, {}, before.count);
  console.log(JSON.stringify({ annotator, choice, by: i % 2 === 0 ? "click" : "key", status: res.status(),
                               prompt: before.prompt, a: before.a, b: before.b, aHtml: before.aHtml }));
}
const html = await page.content();
const injected = await page.evaluate(() => window.__injected === true);
console.log(JSON.stringify({ html, traffic, errors, injected }));
await browser.close();
