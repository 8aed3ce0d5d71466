"""Triples for the shared-prefix test (LLM2Vec, BehnamGhader et al. 2024, section 4), written for lightembed.

Each triple shares a prefix ``A``: the query ``q = A + B``, the positive ``s+ = A + C`` (C means about what B
means) and the negative ``s- = A + D`` (D says something else). Only the *prefix* tokens are pooled, so a model can
rank ``s+`` above ``s-`` only if the prefix representation carries information about the tokens that follow it: a
causal decoder cannot (its prefix states are the same in all three texts), a bidirectional one can.

Fields: ``prefix``, ``query`` (B), ``positive`` (C), ``negative`` (D); the texts are ``prefix + " " + ending``.
"""

from __future__ import annotations

PREFIX_TRIPLES: tuple[dict[str, str], ...] = (
    {
        "prefix": "We had dinner at the new restaurant downtown, and",
        "query": "the pasta was absolutely delicious.",
        "positive": "the food tasted wonderful.",
        "negative": "the car broke down on the way home.",
    },
    {
        "prefix": "After the long meeting this afternoon,",
        "query": "I felt completely exhausted.",
        "positive": "I was very tired.",
        "negative": "the printer started making strange noises.",
    },
    {
        "prefix": "When the team finally scored in the last minute,",
        "query": "the fans cheered loudly in the stadium.",
        "positive": "the crowd erupted with joy.",
        "negative": "the price of bread went up again.",
    },
    {
        "prefix": "My grandmother called me yesterday because",
        "query": "she wanted to wish me a happy birthday.",
        "positive": "she wanted to congratulate me on my birthday.",
        "negative": "the river had flooded the old bridge.",
    },
    {
        "prefix": "The little boy walked into the kitchen and",
        "query": "asked his mother for a cookie.",
        "positive": "begged his mom for something sweet to eat.",
        "negative": "the stock market closed lower on Friday.",
    },
    {
        "prefix": "During the storm last night,",
        "query": "the power went out across the whole town.",
        "positive": "every house in town lost electricity.",
        "negative": "she learned to play the violin.",
    },
    {
        "prefix": "The scientist looked at the results and",
        "query": "realized the experiment had failed.",
        "positive": "understood that the test did not work.",
        "negative": "ordered a large pizza with extra cheese.",
    },
    {
        "prefix": "Before leaving for the airport,",
        "query": "he checked that he had his passport.",
        "positive": "he made sure his travel documents were in his bag.",
        "negative": "the cat knocked a glass off the table.",
    },
    {
        "prefix": "The students opened their books because",
        "query": "the teacher announced a surprise quiz.",
        "positive": "the instructor said there would be an unexpected test.",
        "negative": "the volcano erupted on the distant island.",
    },
    {
        "prefix": "On Sunday morning my neighbour",
        "query": "was washing his car in the driveway.",
        "positive": "was cleaning his vehicle outside the garage.",
        "negative": "won an award for her research on bacteria.",
    },
    {
        "prefix": "The company announced on Monday that",
        "query": "it would hire five hundred new workers.",
        "positive": "it plans to add hundreds of jobs.",
        "negative": "the moon will be visible all night.",
    },
    {
        "prefix": "As soon as the baby woke up,",
        "query": "she started crying for milk.",
        "positive": "she began to cry because she was hungry.",
        "negative": "the train to Berlin was cancelled.",
    },
    {
        "prefix": "The doctor examined the patient and",
        "query": "said that his leg was broken.",
        "positive": "told him he had a fractured leg.",
        "negative": "the garden was full of red roses.",
    },
    {
        "prefix": "While we were hiking in the mountains,",
        "query": "we saw a bear near the trail.",
        "positive": "a bear appeared close to the path.",
        "negative": "my phone bill doubled this month.",
    },
    {
        "prefix": "The old man sat on the bench and",
        "query": "fed bread crumbs to the pigeons.",
        "positive": "gave some bread to the birds.",
        "negative": "the election results were announced late.",
    },
    {
        "prefix": "Because it was raining so heavily,",
        "query": "the football match was postponed.",
        "positive": "the game was moved to another day.",
        "negative": "she painted the kitchen bright yellow.",
    },
    {
        "prefix": "When I opened the fridge this morning,",
        "query": "I found that the milk had gone sour.",
        "positive": "the milk had spoiled.",
        "negative": "the orchestra played a beautiful symphony.",
    },
    {
        "prefix": "The police officer stopped the car because",
        "query": "the driver was going far too fast.",
        "positive": "it was speeding.",
        "negative": "the museum opened a new exhibition.",
    },
    {
        "prefix": "At the end of the concert,",
        "query": "the audience gave the band a standing ovation.",
        "positive": "everyone stood up and applauded the musicians.",
        "negative": "the farmer harvested his wheat.",
    },
    {
        "prefix": "My laptop stopped working yesterday, so",
        "query": "I took it to a repair shop.",
        "positive": "I brought it in to get it fixed.",
        "negative": "the dolphins swam beside the boat.",
    },
    {
        "prefix": "The chef tasted the soup and",
        "query": "decided it needed more salt.",
        "positive": "thought it was not salty enough.",
        "negative": "the satellite was launched into orbit.",
    },
    {
        "prefix": "Every winter in this village,",
        "query": "the lake freezes over completely.",
        "positive": "the water turns to solid ice.",
        "negative": "the bank raises its interest rates.",
    },
    {
        "prefix": "The manager read the complaint and",
        "query": "apologized to the angry customer.",
        "positive": "said sorry to the upset client.",
        "negative": "the children built a sandcastle on the beach.",
    },
    {
        "prefix": "Late in the evening, the girl",
        "query": "finished her homework and went to bed.",
        "positive": "completed her assignments and fell asleep.",
        "negative": "the parliament passed a new tax law.",
    },
)
