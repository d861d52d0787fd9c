/**
 * A small built-in English text (written for this project) from which the test tokenizer learns its
 * BPE merges. Changing this text changes every test model's tokenizer: treat it as frozen.
 */
export const CORPUS = `The small model in this folder was built for tests. It has random weights, so it does not know
anything about the world, but it reads and writes text with a real byte-level tokenizer, and it keeps the
same cache layout as the large models that people run every day.

A user asks a question, and the assistant answers. The user may ask another question later, and the
assistant should remember what was said before. When the server keeps the conversation in memory, the next
answer can start at once, because the earlier words do not have to be read again.

Once upon a time there was a little town by the sea. In the morning the fishermen went out in their boats,
and in the evening they came back with the day's catch. The children ran along the beach, looking for shells
and stones. Their mothers and fathers sat in the sun and talked about the weather, the price of bread, and the
news from the city. It was a quiet place, and nothing very important ever happened there.

One day a stranger arrived on the afternoon train. He was tall and thin, and he carried a heavy leather bag.
He asked the woman at the station where he could find a room for the night. She told him that the old hotel on
the hill had a few rooms, and that the food there was good. He thanked her and walked slowly up the road.

The history of computing is full of surprising ideas. Early machines filled whole rooms and could only add and
multiply numbers. Later, people learned to store programs in memory, so that the same machine could do many
different things. Today a phone in your pocket is thousands of times faster than those first computers.

A language model predicts the next token from the tokens that came before it. During generation, the model
produces one token at a time. Each new token is added to the input, and the model runs again. To save work, the
keys and values of the attention layers are stored in a cache, and only the newest token has to be processed.

Here are some numbers: 1, 2, 3, 10, 42, 100, 256, 1024, 2025, and 3.14159. The meeting starts at 9:30 and ends
at 11:45. The report has 12 pages, 7 tables, and 3 figures. Please send it before Friday, June 6th.

"Where are you going?" she asked. "To the market," he said, "and then to the library." They both laughed. It
was going to be a long day, but the weather was fine, and there was no reason to hurry.

Good morning! How are you today? I am fine, thank you. What would you like to do this afternoon? We could go for
a walk in the park, or we could stay at home and read. I think a walk would be nice, if it does not rain.

The recipe is simple. Mix the flour, the sugar, and the salt in a large bowl. Add the eggs and the milk, and stir
until the batter is smooth. Pour it into a hot pan, cook for two minutes on each side, and serve with fresh fruit.

Science begins with questions. Why is the sky blue? Why do leaves change color in the autumn? How do birds find
their way across the ocean? Scientists make careful observations, form a hypothesis, and then test it with
experiments. If the results do not agree with the hypothesis, they change their ideas and try again.

The system should be fast, reliable, and simple to use. It must handle many requests at the same time, and it
should never lose data. When something goes wrong, it should report a clear error message, so that the people who
maintain it can find and fix the problem quickly.

Music and art have been part of human life for a very long time. People painted animals on the walls of caves,
carved small figures from bone and stone, and made flutes from the wings of birds. Every culture has its own songs,
dances, and stories, and many of them are still remembered today.

The train was late again. The passengers waited on the platform, checking their watches and looking at the board.
At last a voice announced that the train would arrive in ten minutes. A few people sighed; others simply went back
to their books and their phones.

Write a short poem about the moon. The moon is round and bright tonight; it fills the quiet sky with light. The
river shines, the trees stand still, and silver rests on every hill.

Thank you for your help. You're welcome! Let me know if there is anything else I can do. I'll be here all week,
and I'm happy to answer any other questions that you have. We've done a lot of good work together, haven't we?
`;
